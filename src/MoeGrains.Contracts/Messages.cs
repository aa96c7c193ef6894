namespace MoeGrains.Contracts;

/// <summary>What an expert returns: its output, where it ran and how long the computation took.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ExpertResult")]
public sealed record ExpertResult(
    [property: Id(0)] WireTensor Output,
    [property: Id(1)] string Silo,
    [property: Id(2)] double ComputeMs);

/// <summary>An expert as hosted: its identity, plugin, silo, device and size.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ExpertInfo")]
public sealed record ExpertInfo(
    [property: Id(0)] string Key,
    [property: Id(1)] string Plugin,
    [property: Id(2)] string Silo,
    [property: Id(3)] string Device,
    [property: Id(4)] int InputDim,
    [property: Id(5)] int OutputDim,
    [property: Id(6)] long ParameterBytes,
    [property: Id(7)] string DType);

/// <summary>A router's choice for a batch, flattened: <c>Experts[t * K + j]</c> (-1 for an unused slot) and weights.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.RoutingResult")]
public sealed record RoutingResult(
    [property: Id(0)] int Tokens,
    [property: Id(1)] int K,
    [property: Id(2)] int[] Experts,
    [property: Id(3)] float[] Weights);

/// <summary>A request to run one MoE layer on a batch of hidden states <c>[tokens, d_model]</c>.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.MoeLayerRequest")]
public sealed record MoeLayerRequest(
    [property: Id(0)] WireTensor Hidden)
{
    /// <summary>A router plugin to use instead of the model's own (by plugin name), or null.</summary>
    [Id(1)] public string? Router { get; init; }

    /// <summary>Least number of a token's chosen experts that must answer (default 1).</summary>
    [Id(2)] public int KMin { get; init; } = 1;

    /// <summary>How long each expert may take, in milliseconds (0: the configured default).</summary>
    [Id(3)] public int ExpertTimeoutMs { get; init; }

    /// <summary>Experts masked out before routing (indices in the layer), or null.</summary>
    [Id(4)] public int[]? MaskedExperts { get; init; }

    /// <summary>
    /// Cluster-unique ids of the rows' tokens (one per row), or null: the layer records the sampled tokens' routes
    /// (routing traces) when given.
    /// </summary>
    [Id(5)] public long[]? TokenIds { get; init; }

    /// <summary>
    /// The rows' token ids in the model's vocabulary (one per row), or null: recorded with the sampled routes (routing
    /// traces) for routing-path predictors, and used by a silo that prefetches experts (<c>MoeGrains:Offload</c>).
    /// </summary>
    [Id(6)] public long[]? Vocabulary { get; init; }
}

/// <summary>A layer's output and what it cost: per-expert placement and timings, messages and bytes between silos.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.MoeLayerResult")]
public sealed record MoeLayerResult(
    [property: Id(0)] WireTensor Output,
    [property: Id(1)] ExpertCall[] Calls,
    [property: Id(2)] string Silo,
    [property: Id(3)] long CrossSiloBytes,
    [property: Id(4)] int Messages,
    [property: Id(5)] int[] FailedExperts)
{
    /// <summary>Experts skipped because their circuit breaker was open.</summary>
    [Id(6)] public int[] BlockedExperts { get; init; } = [];

    /// <summary>
    /// Requests served by the layer pass that produced this result (continuous batching; 1 when it ran alone). When
    /// above 1, <see cref="Calls"/>, <see cref="Messages"/> and <see cref="CrossSiloBytes"/> describe the shared pass.
    /// </summary>
    [Id(7)] public int MergedRequests { get; init; } = 1;
}

/// <summary>One expert call of one layer step.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ExpertCall")]
public sealed record ExpertCall(
    [property: Id(0)] int Expert,
    [property: Id(1)] int Tokens,
    [property: Id(2)] string Silo,
    [property: Id(3)] double ComputeMs,
    [property: Id(4)] double RoundTripMs,
    [property: Id(5)] string? Error)
{
    /// <summary>Which replica of the expert ran these tokens (0: the expert's own grain; see <see cref="ExpertKey.Replica"/>).</summary>
    [Id(6)] public int Replica { get; init; }
}

/// <summary>A silo's device as advertised: name, kind and memory budget.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.SiloDeviceInfo")]
public sealed record SiloDeviceInfo(
    [property: Id(0)] string Silo,
    [property: Id(1)] string Device,
    [property: Id(2)] long MemoryBudgetBytes,
    [property: Id(3)] bool IsGpu);

/// <summary>A served model as its checkpoint describes it.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ModelInfo")]
public sealed record ModelInfo(
    [property: Id(0)] string Name,
    [property: Id(1)] int Layers,
    [property: Id(2)] int Experts,
    [property: Id(3)] int DModel,
    [property: Id(4)] int TopK,
    [property: Id(5)] string ExpertPlugin,
    [property: Id(6)] string RouterPlugin);
