using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace MoeGrains.Diagnostics;

/// <summary>The one <see cref="Meter"/> (and activity source) of MoeGrains; instrument names are public constants.</summary>
public static class MoeGrainsMetrics
{
    public const string MeterName = "MoeGrains";
    public const string ExpertCallsName = "moegrains.expert.calls";
    public const string ExpertTokensName = "moegrains.expert.tokens";
    public const string ExpertComputeName = "moegrains.expert.compute_ms";
    public const string CrossSiloBytesName = "moegrains.dispatch.cross_silo_bytes";

    public static readonly Meter Meter = new(MeterName);
    public static readonly ActivitySource Activity = new(MeterName);

    public static readonly Counter<long> ExpertCalls = Meter.CreateCounter<long>(ExpertCallsName, description: "Expert calls dispatched (tag remote: crossed silos)");
    public static readonly Counter<long> ExpertTokens = Meter.CreateCounter<long>(ExpertTokensName, description: "Tokens computed by expert grains");
    public static readonly Histogram<double> ExpertComputeMs = Meter.CreateHistogram<double>(ExpertComputeName, "ms", "Expert compute time per batch");
    public static readonly Histogram<long> ExpertBatchCalls = Meter.CreateHistogram<long>("moegrains.expert.batch_calls", "{call}", "Calls served by one expert forward pass (continuous batching)");
    public static readonly Counter<long> CrossSiloBytes = Meter.CreateCounter<long>(CrossSiloBytesName, "By", "Tensor bytes sent between silos by dispatch");
}
