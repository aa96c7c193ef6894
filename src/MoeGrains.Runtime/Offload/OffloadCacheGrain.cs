using MoeGrains.Contracts;
using MoeGrains.Placement;

namespace MoeGrains.Offload;

/// <summary>Reports the expert cache of the silo it is placed on (its key names the silo).</summary>
[SiloTargetPlacement]
internal sealed class OffloadCacheGrain(SiloExpertCache cache) : Grain, IOffloadCacheGrain
{
    public Task<OffloadCacheReport> Stats() => Task.FromResult(cache.Report(RuntimeIdentity));
}
