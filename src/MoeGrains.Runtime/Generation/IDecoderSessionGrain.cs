namespace MoeGrains.Generation;

/// <summary>
/// One generation session of a served language model: the backbone with its KV cache lives in this grain, on the silo
/// that created it; each block's experts are called through the model's MoE layer grains, on whichever silos hold
/// them. Key: <see cref="Key"/> (<c>model/session</c>). Calls are handled one at a time, in order.
/// </summary>
[Alias("moegrains.IDecoderSessionGrain")]
public interface IDecoderSessionGrain : IGrainWithStringKey
{
    /// <summary>
    /// Feeds tokens after those already fed and returns the next-token logits after the last one. <paramref name="router"/>
    /// names a router plugin to use instead of the model's own (fixed by the session's first call).
    /// </summary>
    [Alias("append")]
    Task<DecoderStep> Append(long[] tokens, string? router = null, CancellationToken cancellationToken = default);

    /// <summary>Ends the session: its KV cache and backbone are released.</summary>
    [Alias("close")]
    Task Close();

    public static string Key(string model, string session) => $"{model}/{session}";
}

/// <summary>The result of one decoding step: next-token logits, tokens fed so far, the silo that ran the backbone.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.DecoderStep")]
public sealed record DecoderStep(
    [property: Id(0)] float[] Logits,
    [property: Id(1)] long Position,
    [property: Id(2)] string Silo)
{
    /// <summary>(token, expert) pairs computed in the session so far, per layer.</summary>
    [Id(3)] public long[] ExpertSlots { get; init; } = [];

    /// <summary>Messages between silos for this session so far (a call and its answer count two; a one-way hop one).</summary>
    [Id(20)] public long CrossSiloMessages { get; init; }

    /// <summary>Tensor bytes sent between silos for this session so far.</summary>
    [Id(21)] public long CrossSiloBytes { get; init; }
}
