using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>The experts and router as plugin instances in this process (the in-process reference, and the monolith with no router).</summary>
public sealed class LocalDiffusionBackend : IDiffusionBackend, IDisposable
{
    private readonly IReadOnlyList<IDiffusionExpert> _experts;
    private readonly IDiffusionRouter? _router;

    /// <param name="experts">The experts (all of one size); one expert needs no router.</param>
    public LocalDiffusionBackend(IReadOnlyList<IDiffusionExpert> experts, IDiffusionRouter? router, int imageSize)
    {
        ArgumentNullException.ThrowIfNull(experts);
        if (experts.Count == 0) throw new ArgumentException("At least one expert is needed.", nameof(experts));
        if (experts.Count > 1 && router is null) throw new ArgumentException("Several experts need a router.", nameof(router));
        if (router is not null && router.Descriptor.NumExperts != experts.Count)
            throw new ArgumentException($"The router routes over {router.Descriptor.NumExperts} experts, {experts.Count} given.", nameof(router));
        _experts = experts;
        _router = router;
        ImageSize = imageSize;
    }

    public int Experts => _experts.Count;

    public int ImageSize { get; }

    public long ExpertFlopsPerImage => _experts[0].FlopsPerImage;

    public long RouterFlopsPerImage => _router?.FlopsPerImage ?? 0;

    public Task<Tensor> VelocityAsync(int expert, Tensor noisy, Tensor time)
    {
        if (expert < 0 || expert >= _experts.Count) throw new Contracts.UnknownExpertException($"There is no expert {expert} (0..{_experts.Count - 1}).");
        using var _ = no_grad();
        return Task.FromResult(_experts[expert].PredictVelocity(noisy, time));
    }

    public Task<Tensor> RouterLogitsAsync(Tensor noisy, Tensor time)
    {
        using var _ = no_grad();
        return Task.FromResult(_router is null ? zeros(noisy.shape[0], 1) : _router.Logits(noisy, time));
    }

    public void Dispose()
    {
        foreach (var e in _experts) e.Dispose();
        _router?.Dispose();
    }
}
