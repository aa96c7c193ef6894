using System.Text.Json;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Retrieval.Serving;

namespace MoeGrains.Silo.Api;

/// <summary>
/// The retrieval HTTP API: <c>POST /v1/embeddings</c> (OpenAI-like) and <c>POST /v1/search</c>. Bad input gets 400
/// with <c>{"error": {"message", "type": "invalid_request_error", "param"}}</c>, <c>param</c> naming the field.
/// </summary>
public static class RetrievalEndpoints
{
    public static WebApplication MapRetrieval(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapPost("/v1/embeddings", Embeddings);
        app.MapPost("/v1/search", Search);
        return app;
    }

    /// <summary>
    /// Body: <c>{"model": "minilm", "input": "text" | ["text", ...], "input_type": "document" | "query"}</c> (input_type
    /// optional, default document; queries get the model's query instruction where it has one).
    /// </summary>
    private static async Task<IResult> Embeddings(HttpRequest http, IGrainFactory grains, IOptions<RetrievalOptions> options)
    {
        var o = options.Value;
        try
        {
            using var body = await ApiJson.ReadObjectAsync(http, (field, message) => new RetrievalRequestException(field, message));
            var root = body.RootElement;
            var model = RequiredString(root, "model");
            if (!o.ExpertList.Contains(model, StringComparer.Ordinal))
            {
                throw new RetrievalRequestException("model", $"Unknown model '{model}': this cluster serves {o.Experts}.");
            }
            if (!root.TryGetProperty("input", out var input))
            {
                throw new RetrievalRequestException("input", "\"input\" is required: a string or an array of strings.");
            }
            string[] texts = input.ValueKind switch
            {
                JsonValueKind.String => [input.GetString()!],
                JsonValueKind.Array => [.. input.EnumerateArray().Select((e, i) => e.ValueKind == JsonValueKind.String
                    ? e.GetString()!
                    : throw new RetrievalRequestException("input", $"input[{i}] is {e.ValueKind}, not a string."))],
                _ => throw new RetrievalRequestException("input", $"\"input\" must be a string or an array of strings, got {input.ValueKind}."),
            };
            if (texts.Length == 0 || texts.Length > o.MaxTexts)
            {
                throw new RetrievalRequestException("input", $"\"input\" holds {texts.Length} texts; 1 to {o.MaxTexts} are accepted per request.");
            }
            for (var i = 0; i < texts.Length; i++)
            {
                if (string.IsNullOrWhiteSpace(texts[i]))
                {
                    throw new RetrievalRequestException("input", $"input[{i}] is empty.");
                }
                if (texts[i].Length > o.MaxTextChars)
                {
                    throw new RetrievalRequestException("input", $"input[{i}] has {texts[i].Length} characters; the limit is {o.MaxTextChars}.");
                }
            }
            var role = OptionalString(root, "input_type") switch
            {
                null or "document" => EncodeRole.Document,
                "query" => EncodeRole.Query,
                var other => throw new RetrievalRequestException("input_type", $"\"input_type\" must be \"document\" or \"query\", got \"{other}\"."),
            };
            var retriever = grains.GetGrain<IRetrieverGrain>(model);
            if ((await retriever.Describe()).Dim <= 0)
            {
                throw new RetrievalRequestException("model", $"'{model}' is a lexical expert: it has no embeddings.");
            }
            var encoded = await retriever.Encode(texts, role);
            var values = encoded.ToFloatArray();
            var dim = (int)encoded.Shape[1];
            var words = texts.Sum(t => t.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length);
            return Results.Ok(new
            {
                @object = "list",
                model,
                data = Enumerable.Range(0, texts.Length).Select(i => new { @object = "embedding", index = i, embedding = values.AsSpan(i * dim, dim).ToArray() }),
                usage = new { prompt_tokens = words, total_tokens = words }, // whitespace-separated words
            });
        }
        catch (RetrievalRequestException e)
        {
            return ApiJson.BadRequest(e.Field, e.Message);
        }
        catch (MoeGrainsException e)
        {
            return ApiJson.ServerError(e);
        }
    }

    /// <summary>
    /// Body: <c>{"collection": "med", "query": "...", "k": 10, "expert": "minilm", "router": "domain-pilots"}</c> (k
    /// default 10; expert optional: routed when absent; router optional: the silo's configured router when absent).
    /// </summary>
    private static async Task<IResult> Search(HttpRequest http, IGrainFactory grains)
    {
        try
        {
            using var body = await ApiJson.ReadObjectAsync(http, (field, message) => new RetrievalRequestException(field, message));
            var root = body.RootElement;
            var collection = RequiredString(root, "collection");
            if (!RetrievalKeys.IsValidName(collection))
            {
                throw new RetrievalRequestException("collection", $"'{collection}' is not a collection name (letters, digits, '-', '_', '.'; at most 64 characters).");
            }
            if (!root.TryGetProperty("query", out var query) || query.ValueKind != JsonValueKind.String)
            {
                throw new RetrievalRequestException("query", "\"query\" is required and must be a string.");
            }
            var k = 10;
            if (root.TryGetProperty("k", out var kValue) && kValue.ValueKind != JsonValueKind.Null && !(kValue.ValueKind == JsonValueKind.Number && kValue.TryGetInt32(out k)))
            {
                throw new RetrievalRequestException("k", $"\"k\" must be an integer, got {kValue.GetRawText()}.");
            }
            var result = await grains.GetGrain<IRetrievalGrain>(collection).Search(
                new RetrievalRequest(query.GetString()!, k, OptionalString(root, "expert"), OptionalString(root, "router")));
            return Results.Ok(new
            {
                collection = result.Collection,
                expert = result.Expert,
                routed = result.Routed,
                router = result.Routed ? result.Experts.Zip(result.RouterScores).ToDictionary(p => p.First, p => float.IsFinite(p.Second) ? p.Second : (float?)null) : null,
                router_name = result.Routed ? result.Router : null,
                router_weights = result.Routed && result.Weights is { } w ? result.Experts.Zip(w).ToDictionary(p => p.First, p => p.Second) : null,
                hits = result.Hits.Select((h, i) => new { rank = i + 1, id = h.Id, score = h.Score, title = h.Title, text = h.Text }),
                shard_silos = result.ShardSilos,
            });
        }
        catch (RetrievalRequestException e)
        {
            return ApiJson.BadRequest(e.Field, e.Message);
        }
        catch (MoeGrainsException e)
        {
            return ApiJson.ServerError(e);
        }
    }

    private static string RequiredString(JsonElement root, string name) =>
        root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String && value.GetString() is { Length: > 0 } s
            ? s
            : throw new RetrievalRequestException(name, $"\"{name}\" is required and must be a non-empty string.");

    private static string? OptionalString(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        return value.ValueKind == JsonValueKind.String ? value.GetString() : throw new RetrievalRequestException(name, $"\"{name}\" must be a string.");
    }
}
