using MoeGrains.Contracts;
using MoeGrains.Diffusion;

namespace MoeGrains.Silo.Api;

/// <summary>
/// <c>POST /v1/images/generations</c>: samples a served diffusion model (<c>MoeGrains:Diffusion:Models:NAME</c>) through
/// its expert grains and answers a PNG grid (<c>image/png</c>). Body: <c>{"model", "n", "steps", "top_k", "seed", "scale"}</c>.
/// Bad requests get 400 with the field named; an unknown model 404.
/// </summary>
public static class ImageEndpoints
{
    public sealed record ImageRequest(string? Model, int N = 16, int Steps = 20, int TopK = 1, long Seed = 1, int Scale = 4);

    public static WebApplication MapImageEndpoints(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.MapPost("/v1/images/generations", async (ImageRequest body, DiffusionCatalog catalog, IGrainFactory grains) =>
        {
            try
            {
                if (string.IsNullOrWhiteSpace(body.Model)) throw new DiffusionRequestException("model is required.");
                if (body.Scale is < 1 or > 32) throw new DiffusionRequestException($"scale must be 1..32, got {body.Scale}.");
                var folder = catalog.Get(body.Model);
                var request = new DiffusionSampleRequest(body.N, body.Steps, body.TopK, body.Seed);
                var (images, _, _) = await ClusterDiffusionSampler.SampleAsync(grains, body.Model, folder.Manifest.Experts, request);
                using (images)
                {
                    return Results.File(ImageGrid.Png(images, scale: body.Scale), "image/png");
                }
            }
            catch (DiffusionRequestException e)
            {
                return Results.Json(new { error = e.Message }, statusCode: 400);
            }
            catch (UnknownExpertException e)
            {
                return Results.Json(new { error = e.Message }, statusCode: 404);
            }
            catch (MoeGrainsException e)
            {
                return Results.Json(new { error = e.Message }, statusCode: 503);
            }
        });
        return app;
    }
}
