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

    // Expert offloading (Offload/): the device expert cache.
    public static readonly Counter<long> OffloadHits = Meter.CreateCounter<long>("moegrains.offload.hits", description: "Expert accesses that found the expert resident or being prefetched");
    public static readonly Counter<long> OffloadMisses = Meter.CreateCounter<long>("moegrains.offload.misses", description: "Expert accesses that had to load the expert");
    public static readonly Counter<long> OffloadLoads = Meter.CreateCounter<long>("moegrains.offload.loads", description: "Experts loaded from the weight store (on demand or prefetched)");
    public static readonly Counter<long> OffloadBytesRead = Meter.CreateCounter<long>("moegrains.offload.bytes_read", "By", "Bytes read from the expert weight store");
    public static readonly UpDownCounter<long> OffloadResidentExperts = Meter.CreateUpDownCounter<long>("moegrains.offload.resident_experts", description: "Experts resident on the device");
    public static readonly UpDownCounter<long> OffloadResidentBytes = Meter.CreateUpDownCounter<long>("moegrains.offload.resident_bytes", "By", "Expert bytes resident on the device");
    public static readonly Histogram<double> OffloadStallMs = Meter.CreateHistogram<double>("moegrains.offload.stall_ms", "ms", "Time an expert access waited for its weights");
}
