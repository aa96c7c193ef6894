using MoeGrains.Contracts;

namespace MoeGrains.Silo.Api;

/// <summary>Experts that do not fit: <c>GET /v1/offload</c>, every silo's expert cache (budget, hit ratio, loads, bytes read, resident experts, stall time, prefetch hints and prefetches used).</summary>
public static class OffloadEndpoints
{
    public static WebApplication MapOffload(this WebApplication app)
    {
        app.MapGet("/v1/offload", async (IGrainFactory grains) =>
        {
            var silos = await grains.GetGrain<IClusterInfoGrain>(0).Silos();
            var reports = await Task.WhenAll(silos.Select(s => grains.GetGrain<IOffloadCacheGrain>(s.Silo).Stats()));
            return Results.Ok(reports.Select(r => new
            {
                r.Silo, r.Enabled, r.Policy, budget_experts = r.BudgetExperts, budget_bytes = r.BudgetBytes, r.Accesses, r.Hits,
                hit_ratio = Math.Round(r.HitRatio, 4), r.Loads, r.Evictions, bytes_read = r.BytesRead, resident_experts = r.ResidentExperts,
                resident_bytes = r.ResidentBytes, peak_resident_experts = r.PeakResidentExperts, peak_resident_bytes = r.PeakResidentBytes, stall_ms = r.StallMs,
                demand_loads = r.DemandLoads, prefetch_hints_sent = r.PrefetchHintsSent, prefetch_hints_received = r.PrefetchHintsReceived,
                prefetches = r.Prefetches, prefetches_used = r.PrefetchesUsed, predictor_paths = r.PredictorPaths,
            }));
        });
        return app;
    }
}
