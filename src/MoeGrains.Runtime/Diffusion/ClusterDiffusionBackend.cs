using System.Collections.Concurrent;
using MoeGrains.Contracts;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>The experts of a served diffusion model as grains spread over the cluster's silos; every sampling step is one message per chosen expert.</summary>
public sealed class ClusterDiffusionBackend : IDiffusionBackend
{
    private readonly IGrainFactory _grains;
    private readonly string _model;
    private readonly ConcurrentDictionary<string, int> _silos = new(StringComparer.Ordinal);

    private ClusterDiffusionBackend(IGrainFactory grains, string model, int experts, int imageSize, long expertFlops, long routerFlops)
    {
        (_grains, _model, Experts, ImageSize, ExpertFlopsPerImage, RouterFlopsPerImage) = (grains, model, experts, imageSize, expertFlops, routerFlops);
    }

    public int Experts { get; }

    public int ImageSize { get; }

    public long ExpertFlopsPerImage { get; }

    public long RouterFlopsPerImage { get; }

    /// <summary>The silos that answered for each expert (<c>model/k @ silo</c>).</summary>
    public IReadOnlyCollection<string> ExpertSilos => _silos.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>A backend for <paramref name="model"/> with <paramref name="experts"/> experts; sizes are asked of expert 0 and the router.</summary>
    public static async Task<ClusterDiffusionBackend> CreateAsync(IGrainFactory grains, string model, int experts)
    {
        ArgumentNullException.ThrowIfNull(grains);
        var info = await grains.GetGrain<IDiffusionExpertGrain>(IDiffusionExpertGrain.Key(model, 0)).Describe().ConfigureAwait(false);
        var routerFlops = experts > 1 ? await grains.GetGrain<IDiffusionRouterGrain>(model).FlopsPerImage().ConfigureAwait(false) : 0;
        return new ClusterDiffusionBackend(grains, model, experts, info.ImageSize, info.FlopsPerImage, routerFlops);
    }

    public async Task<Tensor> VelocityAsync(int expert, Tensor noisy, Tensor time)
    {
        var key = IDiffusionExpertGrain.Key(_model, expert);
        var result = await _grains.GetGrain<IDiffusionExpertGrain>(key).PredictVelocity(WireTensor.FromTensor(noisy), WireTensor.FromTensor(time)).ConfigureAwait(false);
        _silos.TryAdd($"{key} @ {result.Silo}", 0);
        return result.Velocity.ToTensor();
    }

    public async Task<Tensor> RouterLogitsAsync(Tensor noisy, Tensor time)
    {
        var logits = await _grains.GetGrain<IDiffusionRouterGrain>(_model).Logits(WireTensor.FromTensor(noisy), WireTensor.FromTensor(time)).ConfigureAwait(false);
        return logits.ToTensor();
    }
}

/// <summary>Sampling through the cluster: the ensemble runs in the caller, each step one message per chosen expert grain.</summary>
public static class ClusterDiffusionSampler
{
    /// <summary>Validates <paramref name="request"/> against a model of <paramref name="experts"/> experts and samples it.</summary>
    public static async Task<(Tensor Images, DiffusionEnsemble Ensemble, ClusterDiffusionBackend Backend)> SampleAsync(IGrainFactory grains, string model, int experts,
        DiffusionSampleRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        request.Validate(experts);
        var backend = await CreateAsync().ConfigureAwait(false);
        var ensemble = new DiffusionEnsemble(backend);
        var images = await ensemble.SampleAsync(request.Count, request.Steps, request.TopK == 0 ? experts : request.TopK, request.Seed).ConfigureAwait(false);
        return (images, ensemble, backend);

        Task<ClusterDiffusionBackend> CreateAsync() => ClusterDiffusionBackend.CreateAsync(grains, model, experts);
    }
}
