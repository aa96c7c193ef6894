using System.Text.Json;
using MoeGrains.Contracts;
using MoeGrains.Diffusion;

namespace MoeGrains.Silo.Api;

/// <summary>
/// <c>POST /v1/images/generations</c>: samples a served diffusion model (<c>MoeGrains:Diffusion:Models:NAME</c>) through
/// its expert grains. Body: <c>{"model", "n", "steps", "top_k", "seed", "scale", "size", "response_format"}</c>; only
/// <c>model</c> is required. <c>size</c> (<c>"8x8"</c>), when given, must be the model's image size.
/// <c>response_format</c> <c>"png"</c> (default) answers the PNG grid (<c>image/png</c>); <c>"b64_json"</c> answers
/// <c>{"created", "model", "size", "data": [{"b64_json"}]}</c> with the grid base64-encoded. Bad input gets 400 with
/// <c>{"error": {"message", "type": "invalid_request_error", "param"}}</c>, <c>param</c> naming the field.
/// </summary>
public static class ImageEndpoints
{
    public static WebApplication MapImageEndpoints(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapPost("/v1/images/generations", Generate);
        return app;
    }

    private static async Task<IResult> Generate(HttpRequest http, DiffusionCatalog catalog, IGrainFactory grains)
    {
        try
        {
            using var body = await ApiJson.ReadObjectAsync(http, (field, message) => new DiffusionRequestException(field, message));
            var root = body.RootElement;
            if (!root.TryGetProperty("model", out var modelElement) || modelElement.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(modelElement.GetString()))
            {
                throw new DiffusionRequestException("model", "\"model\" is required: the name of a served diffusion model.");
            }
            var model = modelElement.GetString()!;
            DiffusionModelFolder folder;
            try
            {
                folder = catalog.Get(model);
            }
            catch (UnknownExpertException e)
            {
                throw new DiffusionRequestException("model", e.Message);
            }
            var n = Int(root, "n", 16);
            var steps = Int(root, "steps", 20);
            var topK = Int(root, "top_k", 1);
            var seed = Long(root, "seed", 1);
            var scale = Int(root, "scale", 4);
            if (scale is < 1 or > 32) throw new DiffusionRequestException("scale", $"scale must be 1..32, got {scale}.");
            var side = folder.Manifest.ImageSize;
            var size = $"{side}x{side}";
            if (root.TryGetProperty("size", out var sizeElement) && sizeElement.ValueKind != JsonValueKind.Null
                && (sizeElement.ValueKind != JsonValueKind.String || sizeElement.GetString() != size))
            {
                throw new DiffusionRequestException("size", $"Model '{model}' generates {size} images; size {sizeElement.GetRawText()} is not available.");
            }
            var format = root.TryGetProperty("response_format", out var f) && f.ValueKind != JsonValueKind.Null
                ? f.ValueKind == JsonValueKind.String ? f.GetString() : null
                : "png";
            if (format is not ("png" or "b64_json"))
            {
                throw new DiffusionRequestException("response_format", $"response_format must be \"png\" or \"b64_json\", got {f.GetRawText()}.");
            }
            var request = new DiffusionSampleRequest(n, steps, topK, seed);
            request.Validate(folder.Manifest.Experts);
            var columns = (int)Math.Ceiling(Math.Sqrt(n));
            if (columns * (side * scale + 1) + 1 > ImageGrid.MaxSide)
            {
                throw new DiffusionRequestException("scale", $"{n} images of {size} at scale {scale} make a grid wider than {ImageGrid.MaxSide} pixels; use a smaller scale.");
            }
            var (images, _, _) = await ClusterDiffusionSampler.SampleAsync(grains, model, folder.Manifest.Experts, request);
            byte[] png;
            using (images)
            {
                png = ImageGrid.Png(images, scale: scale);
            }
            return format == "png"
                ? Results.File(png, "image/png")
                : Results.Ok(new
                {
                    created = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
                    model,
                    size,
                    n,
                    data = new[] { new { b64_json = Convert.ToBase64String(png) } },
                });
        }
        catch (DiffusionRequestException e)
        {
            return ApiJson.BadRequest(e.Field, e.Message);
        }
        catch (MoeGrainsException e)
        {
            return ApiJson.ServerError(e);
        }
    }

    private static long Long(JsonElement root, string field, long fallback)
    {
        if (!root.TryGetProperty(field, out var e) || e.ValueKind == JsonValueKind.Null) return fallback;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out var v)
            ? v
            : throw new DiffusionRequestException(field, $"\"{field}\" must be a whole number, got {e.GetRawText()}.");
    }

    private static int Int(JsonElement root, string field, int fallback)
    {
        if (!root.TryGetProperty(field, out var e) || e.ValueKind == JsonValueKind.Null) return fallback;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var v)
            ? v
            : throw new DiffusionRequestException(field, $"\"{field}\" must be a whole number, got {e.GetRawText()}.");
    }
}
