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

    /// <summary>
    /// Checks the request (<see cref="GenerationRequestValidator"/>: options, router, prompt against the context and the
    /// vocabulary), then generates in this grain: each token is published, as it is chosen, on the Orleans stream
    /// <see cref="GenerationStreams.Id"/> of this session's key with sequence numbers from 0, then an end marker with the
    /// reason. Returns once the request is accepted, before the first token; a session generates once.
    /// </summary>
    [Alias("generate")]
    Task<GenerationStarted> Generate(int[] prompt, GenerationOptions options, string? router = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// The events of this session's generation from <paramref name="fromSequence"/> on, as published so far (the end
    /// marker included once it is): a consumer that sees a gap in the sequence numbers, or no event for a while, fills
    /// it from here, so a stream event lost on an overloaded silo neither drops a token nor leaves the consumer waiting.
    /// </summary>
    [Alias("replay")]
    Task<GenerationEvent[]> Replay(long fromSequence);

    /// <summary>Ends the session (a running generation is cancelled and ends with an error marker): its KV cache and backbone are released.</summary>
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
