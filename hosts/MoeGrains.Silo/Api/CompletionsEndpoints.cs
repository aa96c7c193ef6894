using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Models;
using MoeGrains.Plugins;
using MoeGrains.Plugins.Mixtral.Tokenizers;

namespace MoeGrains.Silo.Api;

/// <summary>
/// <c>POST /v1/completions</c> in the form OpenAI-style clients speak: <c>model</c>, <c>prompt</c>, <c>max_tokens</c>,
/// <c>temperature</c>, <c>top_p</c>, <c>seed</c>, <c>stream</c>, <c>router</c> (or <c>policy</c>: a router plugin
/// instead of the model's own) and <c>scmoe</c> (self-contrast decoding: <c>true</c> or <c>{"alpha", "beta", "weak_rank"}</c>). The prompt is tokenized here with the checkpoint's tokenizer; a decoder session grain
/// generates and publishes the tokens on an Orleans stream, and they are sent on as they arrive: one JSON object, or
/// server-sent events (<c>data: {...}</c> per token, the last chunk with <c>finish_reason</c>, then <c>data: [DONE]</c>).
/// Every bad request is a 400 with <c>{"error": {"message", "type": "invalid_request_error", "param"}}</c> naming the field.
/// </summary>
public static class CompletionsEndpoints
{
    /// <summary>Largest request body accepted.</summary>
    public const int MAX_BODY_BYTES = 1 << 20;

    /// <summary>Tokens generated when the request does not say (OpenAI's default).</summary>
    public const int DEFAULT_MAX_TOKENS = 16;

    private static readonly JsonSerializerOptions Json = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };

    public static WebApplication MapCompletions(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapPost("/v1/completions", Complete);
        return app;
    }

    /// <summary>A parsed, checked request.</summary>
    private sealed record Completion(string Model, string Prompt, int[] PromptIds, ITextTokenizer Tokenizer, GenerationOptions Options, string? Router, bool Stream);

    private static async Task Complete(HttpContext http, IClusterClient client, ModelCatalog models, PluginCatalog plugins)
    {
        Completion request;
        try
        {
            request = await Parse(http.Request, models, plugins, http.RequestAborted);
        }
        catch (GenerationRequestException e)
        {
            await Error(http.Response, 400, e.Message, e.Field);
            return;
        }
        catch (CheckpointException e)
        {
            await Error(http.Response, 503, e.Message, GenerationRequestValidator.ModelField, "server_error");
            return;
        }

        var id = "cmpl-" + Guid.NewGuid().ToString("N")[..24];
        var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var events = GenerationStreams.GenerateAsync(client, request.Model, request.PromptIds, request.Options, request.Router, http.RequestAborted)
            .GetAsyncEnumerator(http.RequestAborted);
        try
        {
            // The first event proves the request was accepted by the session grain: errors before it are still a 400.
            bool any;
            try
            {
                any = await events.MoveNextAsync();
            }
            catch (GenerationRequestException e)
            {
                await Error(http.Response, 400, e.Message, e.Field);
                return;
            }
            catch (UnknownExpertException e)
            {
                await Error(http.Response, 400, e.Message, GenerationRequestValidator.ModelField);
                return;
            }
            catch (CheckpointException e)
            {
                await Error(http.Response, 503, e.Message, GenerationRequestValidator.ModelField, "server_error");
                return;
            }
            if (!any)
            {
                await Error(http.Response, 500, "The generation ended without any event.", null, "server_error");
                return;
            }

            var sw = Stopwatch.StartNew();
            var generated = new List<int>();
            var text = new IncrementalText(request.Tokenizer);
            if (request.Stream)
            {
                http.Response.StatusCode = 200;
                http.Response.ContentType = "text/event-stream";
                http.Response.Headers.CacheControl = "no-cache";
                await http.Response.Body.FlushAsync(http.RequestAborted);
            }
            var pieces = new StringBuilder();
            GenerationEvent last;
            do
            {
                last = events.Current;
                if (last.IsEnd)
                {
                    break;
                }
                generated.Add(last.Token);
                var piece = text.Add(last.Token);
                if (request.Stream)
                {
                    await Send(http.Response, Chunk(id, created, request.Model, piece, null, last.Sequence, last.Token), http.RequestAborted);
                }
                else
                {
                    pieces.Append(piece);
                }
            }
            while (await events.MoveNextAsync());

            var rest = text.Flush();
            var finish = last.Finish switch { FinishReason.Stop => "stop", FinishReason.Error => "error", _ => "length" };
            var usage = new JsonObject
            {
                ["prompt_tokens"] = request.PromptIds.Length, ["completion_tokens"] = generated.Count, ["total_tokens"] = request.PromptIds.Length + generated.Count,
            };
            var moegrains = new JsonObject
            {
                ["silo"] = last.Silo, ["seed"] = request.Options.Seed, ["router"] = request.Router, ["scmoe"] = request.Options.SelfContrast is not null, ["tokens_per_s"] = generated.Count / Math.Max(sw.Elapsed.TotalSeconds, 1e-9),
                ["experts_per_token_by_layer"] = new JsonArray([.. last.ExpertsPerToken.Select(e => (JsonNode?)e)]),
            };
            if (request.Stream)
            {
                var end = Chunk(id, created, request.Model, rest, finish, last.Sequence, null);
                end["usage"] = usage;
                end["moegrains"] = moegrains;
                if (last.Error is not null)
                {
                    end["error"] = ErrorBody(last.Error, null, "server_error")["error"]!.DeepClone();
                }
                await Send(http.Response, end, http.RequestAborted);
                await http.Response.WriteAsync("data: [DONE]\n\n", http.RequestAborted);
                await http.Response.Body.FlushAsync(http.RequestAborted);
                return;
            }
            if (last.Error is not null)
            {
                await Error(http.Response, 500, last.Error, null, "server_error");
                return;
            }
            pieces.Append(rest);
            var body = new JsonObject
            {
                ["id"] = id, ["object"] = "text_completion", ["created"] = created, ["model"] = request.Model,
                ["choices"] = new JsonArray(new JsonObject
                {
                    ["text"] = pieces.ToString(), ["index"] = 0, ["logprobs"] = null, ["finish_reason"] = finish,
                    ["token_ids"] = new JsonArray([.. generated.Select(t => (JsonNode?)t)]),
                }),
                ["usage"] = usage,
                ["moegrains"] = moegrains,
            };
            http.Response.StatusCode = 200;
            await http.Response.WriteAsJsonAsync(body, Json, http.RequestAborted);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            // The client went away: disposing the enumerator closes the session, which cancels the generation.
        }
        finally
        {
            await events.DisposeAsync();
        }
    }

    private static JsonObject Chunk(string id, long created, string model, string text, string? finish, long sequence, int? token) => new()
    {
        ["id"] = id, ["object"] = "text_completion", ["created"] = created, ["model"] = model,
        ["choices"] = new JsonArray(new JsonObject { ["text"] = text, ["index"] = 0, ["logprobs"] = null, ["finish_reason"] = finish, ["token_id"] = token }),
        ["sequence"] = sequence,
    };

    private static async Task Send(HttpResponse response, JsonObject chunk, CancellationToken cancellationToken)
    {
        await response.WriteAsync("data: " + chunk.ToJsonString(Json) + "\n\n", cancellationToken);
        await response.Body.FlushAsync(cancellationToken);
    }

    /// <summary>Reads, parses and checks the request: every failure names its field (<c>body</c> for the body itself).</summary>
    private static async Task<Completion> Parse(HttpRequest http, ModelCatalog models, PluginCatalog plugins, CancellationToken cancellationToken)
    {
        if (http.ContentLength > MAX_BODY_BYTES)
        {
            throw new GenerationRequestException("body", $"The request body has {http.ContentLength} bytes; at most {MAX_BODY_BYTES} are accepted.");
        }
        var buffer = new MemoryStream();
        var chunk = new byte[16 * 1024];
        int read;
        while ((read = await http.Body.ReadAsync(chunk, cancellationToken)) > 0)
        {
            if (buffer.Length + read > MAX_BODY_BYTES)
            {
                throw new GenerationRequestException("body", $"The request body exceeds {MAX_BODY_BYTES} bytes.");
            }
            buffer.Write(chunk, 0, read);
        }
        JsonElement root;
        try
        {
            using var document = JsonDocument.Parse(buffer.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
            root = document.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new GenerationRequestException("body", $"The request body is not valid JSON: {e.Message}");
        }
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new GenerationRequestException("body", "The request body must be a JSON object.");
        }

        var served = models.Names;
        var model = String(root, GenerationRequestValidator.ModelField) ?? (served.Count == 1 ? served.First() : null);
        GenerationRequestValidator.CheckModel(model, served);
        var prompt = Prompt(root);
        var options = new GenerationOptions
        {
            MaxTokens = Int(root, GenerationRequestValidator.MaxTokensField) ?? DEFAULT_MAX_TOKENS,
            Temperature = Number(root, GenerationRequestValidator.TemperatureField) ?? 1.0,
            TopP = Number(root, GenerationRequestValidator.TopPField) ?? 1.0,
            Seed = Long(root, "seed") ?? Random.Shared.NextInt64(int.MaxValue),
        };
        GenerationRequestValidator.CheckOptions(options);
        // "policy" is accepted as another name of "router"; an error names the field the client used.
        var routerField = Present(root, GenerationRequestValidator.RouterField, out _) ? GenerationRequestValidator.RouterField : "policy";
        var router = String(root, routerField);
        try
        {
            GenerationRequestValidator.CheckRouter(router, plugins);
        }
        catch (GenerationRequestException e)
        {
            throw new GenerationRequestException(routerField, e.Message);
        }
        var stream = Bool(root, "stream") ?? false;

        var file = models.File(model!);
        if (!file.Metadata.ContainsKey(DecoderSession.BackbonePluginKey))
        {
            throw new GenerationRequestException(GenerationRequestValidator.ModelField, $"Model '{model}' holds MoE layers only; it is not a language model.");
        }
        ITextTokenizer tokenizer;
        try
        {
            tokenizer = TextTokenizers.FromMetadata(file.Metadata);
        }
        catch (InvalidDataException e)
        {
            throw new GenerationRequestException(GenerationRequestValidator.ModelField, $"Model '{model}': {e.Message}");
        }
        var context = file.Metadata.TryGetValue("max_position_embeddings", out var c) && int.TryParse(c, out var n) ? n : 0;
        var ids = GenerationRequestValidator.CheckPrompt(prompt, tokenizer.Encode, context);
        var experts = file.Metadata.TryGetValue("num_local_experts", out var ex) && int.TryParse(ex, out var ne) ? ne : (int?)null;
        var contrast = SelfContrast(root, experts);
        return new Completion(model!, prompt!, ids, tokenizer, options with { StopToken = TextTokenizers.StopToken(tokenizer), SelfContrast = contrast }, router, stream);
    }

    /// <summary>
    /// <c>scmoe</c>: self-contrast decoding, <c>true</c> (the defaults) or <c>{"alpha", "beta", "weak_rank"}</c> (each
    /// optional); an error names the field (<c>scmoe.alpha</c>, ...).
    /// </summary>
    private static SelfContrastDecoding? SelfContrast(JsonElement root, int? experts)
    {
        const string field = GenerationRequestValidator.ScmoeField;
        if (!Present(root, field, out var v) || v.ValueKind == JsonValueKind.False)
        {
            return null;
        }
        SelfContrastDecoding contrast;
        if (v.ValueKind == JsonValueKind.True)
        {
            contrast = new SelfContrastDecoding();
        }
        else if (v.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in v.EnumerateObject())
            {
                if (p.Name is not ("alpha" or "beta" or "weak_rank"))
                {
                    throw new GenerationRequestException($"{field}.{p.Name}", $"Unknown SCMoE parameter '{p.Name}' (known: alpha, beta, weak_rank).");
                }
            }
            double? Param(string name) => !Present(v, name, out var x) ? null
                : x.ValueKind == JsonValueKind.Number && x.TryGetDouble(out var d) ? d
                : throw new GenerationRequestException($"{field}.{name}", $"{field}.{name} must be a number, got {x.GetRawText()}.");
            var rank = !Present(v, "weak_rank", out var r) ? SelfContrastDecoding.DEFAULT_WEAK_RANK
                : r.ValueKind == JsonValueKind.Number && r.TryGetInt32(out var ri) ? ri
                : throw new GenerationRequestException(GenerationRequestValidator.ScmoeWeakRankField, $"{field}.weak_rank must be an integer, got {r.GetRawText()}.");
            contrast = new SelfContrastDecoding(Param("alpha") ?? SelfContrastDecoding.DEFAULT_ALPHA, Param("beta") ?? SelfContrastDecoding.DEFAULT_BETA) { WeakRank = rank };
        }
        else
        {
            throw new GenerationRequestException(field, $"{field} must be true, false or an object {{\"alpha\", \"beta\", \"weak_rank\"}}, got {v.GetRawText()}.");
        }
        contrast.Validate(experts);
        return contrast;
    }

    private static string? Prompt(JsonElement root)
    {
        if (!root.TryGetProperty(GenerationRequestValidator.PromptField, out var p) || p.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (p.ValueKind == JsonValueKind.String)
        {
            return p.GetString();
        }
        // OpenAI also takes a list of prompts; one is served per request here.
        if (p.ValueKind == JsonValueKind.Array && p.GetArrayLength() == 1 && p[0].ValueKind == JsonValueKind.String)
        {
            return p[0].GetString();
        }
        throw new GenerationRequestException(GenerationRequestValidator.PromptField, "prompt must be a string (or a list of one string).");
    }

    private static bool Present(JsonElement root, string field, out JsonElement value) =>
        root.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null;

    private static string? String(JsonElement root, string field) => !Present(root, field, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString() : throw new GenerationRequestException(field, $"{field} must be a string.");

    private static bool? Bool(JsonElement root, string field) => !Present(root, field, out var v) ? null
        : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw new GenerationRequestException(field, $"{field} must be true or false.");

    private static int? Int(JsonElement root, string field) => !Present(root, field, out var v) ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i) ? i
        : throw new GenerationRequestException(field, $"{field} must be an integer between 1 and {GenerationOptions.MAX_NEW_TOKENS}, got {v.GetRawText()}.");

    private static long? Long(JsonElement root, string field) => !Present(root, field, out var v) ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out var i) ? i : throw new GenerationRequestException(field, $"{field} must be an integer, got {v.GetRawText()}.");

    /// <summary>A number; JSON has no NaN, so <c>"NaN"</c> and friends arrive as strings and are named as not numbers.</summary>
    private static double? Number(JsonElement root, string field) => !Present(root, field, out var v) ? null
        : v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out var d) ? d : throw new GenerationRequestException(field, $"{field} must be a number, got {v.GetRawText()}.");

    private static JsonObject ErrorBody(string message, string? field, string type) => new()
    {
        ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = field, ["code"] = null },
    };

    private static async Task Error(HttpResponse response, int status, string message, string? field, string type = "invalid_request_error")
    {
        if (response.HasStarted)
        {
            return;
        }
        response.StatusCode = status;
        await response.WriteAsJsonAsync(ErrorBody(message, field, type), Json);
    }

    /// <summary>Decodes the tokens so far and hands out the new text; holds back a character a later BPE token completes.</summary>
    private sealed class IncrementalText(ITextTokenizer tokenizer)
    {
        private readonly List<int> _ids = [];
        private int _sent;

        public string Add(int token)
        {
            _ids.Add(token);
            var text = tokenizer.Decode(_ids);
            if (text.Length <= _sent || char.IsHighSurrogate(text[^1]) || text[^1] == '\uFFFD')
            {
                return "";
            }
            var piece = text[_sent..];
            _sent = text.Length;
            return piece;
        }

        public string Flush()
        {
            var text = tokenizer.Decode(_ids);
            var piece = text.Length > _sent ? text[_sent..] : "";
            _sent = text.Length;
            return piece;
        }
    }
}
