namespace MoeGrains.Contracts;

/// <summary>
/// What one silo's expert cache has done (experts that do not fit: <c>MoeGrains:Offload</c>). <c>Enabled</c> is false
/// when the silo keeps every expert resident (no budget configured).
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.OffloadCacheReport")]
public sealed record OffloadCacheReport(
    [property: Id(0)] string Silo,
    [property: Id(1)] bool Enabled,
    [property: Id(2)] string Policy,
    [property: Id(3)] int BudgetExperts,
    [property: Id(4)] long BudgetBytes,
    [property: Id(5)] long Accesses,
    [property: Id(6)] long Hits,
    [property: Id(7)] long Loads,
    [property: Id(8)] long Evictions,
    [property: Id(9)] long BytesRead,
    [property: Id(10)] int ResidentExperts,
    [property: Id(11)] long ResidentBytes,
    [property: Id(12)] int PeakResidentExperts,
    [property: Id(13)] long PeakResidentBytes,
    [property: Id(14)] double StallMs)
{
    public double HitRatio => Accesses == 0 ? 0 : (double)Hits / Accesses;

    /// <summary>Prefetch hints this silo's layer grains sent to the next layer's expert grains (predictive policy with a predictor).</summary>
    [Id(15)] public long PrefetchHintsSent { get; init; }

    /// <summary>Prefetch hints this silo's expert grains received.</summary>
    [Id(16)] public long PrefetchHintsReceived { get; init; }

    /// <summary>Experts the cache started reading because of a hint (the others were resident, in flight, or not worth an eviction).</summary>
    [Id(17)] public long Prefetches { get; init; }

    /// <summary>Prefetched experts that a computation then used (each counts once, as a hit).</summary>
    [Id(18)] public long PrefetchesUsed { get; init; }

    /// <summary>Loads made because a computation needed an expert that was not resident (stalls).</summary>
    [Id(19)] public long DemandLoads { get; init; }

    /// <summary>Routing paths behind this silo's routing-path predictors (all models), 0 when it has none.</summary>
    [Id(20)] public long PredictorPaths { get; init; }
}

/// <summary>One silo's expert-cache figures. Key: the silo's address (a grain's <c>RuntimeIdentity</c>), placed on that silo.</summary>
[Alias("moegrains.IOffloadCacheGrain")]
public interface IOffloadCacheGrain : IGrainWithStringKey
{
    [Alias("stats")]
    Task<OffloadCacheReport> Stats();
}
