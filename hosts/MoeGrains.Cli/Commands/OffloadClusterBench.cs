using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Offload;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// The offload bench's cluster workload: the reference model served by a 2-silo local cluster whose silos each hold a
/// device budget for their experts (<c>MoeGrains:Offload</c>), greedy requests through decoder session grains, and the
/// routing-path predictor (trained from the cluster's own traces) given to every silo, so the layer grains send prefetch
/// hints for the next layer's likely experts; with a budget, the silos' shared backbones also stream their attention
/// weights (<c>ResidentAttentionLayers</c>). Counts and device bytes summed over the silos; output compared with a
/// cluster without a budget (everything resident).
/// </summary>
internal static class OffloadClusterBench
{
    private const int Silos = 2;

    public static async Task<List<OffloadBenchCommand.OffloadRun>> RunAsync(string weightsPath, RoutingPathPredictor predictor, long[][] prompts, int newTokens,
        int expertsPerSilo, int attentionLayers, Func<string, bool> want, Action<string> log, CancellationToken ct)
    {
        var rows = new List<OffloadBenchCommand.OffloadRun>();
        log($"cluster: {Silos} silos, no budget ({prompts.Length} requests x {newTokens} greedy tokens through session grains)...");
        var resident = await RunAsync(weightsPath, predictor, prompts, newTokens, 0, "lru", false, 0, "resident", ct);
        foreach (var fraction in new[] { 0.25, 0.5 })
        {
            var budget = Math.Max(1, (int)Math.Ceiling(fraction * expertsPerSilo - 1e-9));
            foreach (var (policy, prefetch, name) in new[] { ("lru", false, "lru"), ("lfu", false, "lfu"), ("predictive", false, "predictive"), ("predictive", true, "predictive+prefetch") })
            {
                if (!want($"cluster:{fraction}:{name}")) continue;
                log($"cluster: budget {budget} of {expertsPerSilo} experts per silo, {name}...");
                var r = await RunAsync(weightsPath, predictor, prompts, newTokens, budget, policy, prefetch, attentionLayers, name, ct);
                var s = r.Reports;
                long Sum(Func<OffloadCacheReport, long> f) => s.Sum(f);
                var accesses = Sum(x => x.Accesses);
                var peakBytes = Sum(x => x.PeakResidentBytes);
                // All weights: the silos' backbones (one per silo that ran sessions) and experts, against everything resident.
                var allResident = resident.PeakBackboneBytes + r.AllExpertBytes;
                rows.Add(new OffloadBenchCommand.OffloadRun(
                    $"cluster-{Silos}-silos", fraction, name,
                    HitRatio: accesses == 0 ? 0 : Math.Round((double)Sum(x => x.Hits) / accesses, 4),
                    LoadsPerToken: Math.Round((double)Sum(x => x.Loads) / r.Tokens, 4),
                    DemandLoadsPerToken: Math.Round((double)Sum(x => x.DemandLoads) / r.Tokens, 4),
                    BytesPerToken: Math.Round((double)Sum(x => x.BytesRead) / r.Tokens, 1),
                    PeakDeviceBytes: peakBytes + r.PeakBackboneBytes, MemorySaved: Math.Round(1 - (double)(peakBytes + r.PeakBackboneBytes) / allResident, 4),
                    ExpertMemorySaved: Math.Round(1 - (double)peakBytes / r.AllExpertBytes, 4),
                    PeakDeviceExpertBytes: peakBytes, PeakCacheBytes: peakBytes, PeakResidentExperts: s.Max(x => x.PeakResidentExperts),
                    TokensPerS: Math.Round(r.Tokens / r.Seconds, 1), SlowdownVsResident: Math.Round(r.Seconds / resident.Seconds, 3),
                    StallMsPerToken: Math.Round(s.Sum(x => x.StallMs) / r.Tokens, 3), PredictionRecall: null, PredictionPrecision: null,
                    DistinctExpertsPerBatchLayer: null, r.Tokens,
                    IdenticalToResident: r.Outputs.Zip(resident.Outputs).All(p => p.First.SequenceEqual(p.Second)),
                    ResidentAttentionLayers: r.ResidentAttentionLayers, AttentionBytesPerToken: Math.Round((double)r.AttentionBytesCopied / r.Tokens, 1))
                {
                    PrefetchHints = Sum(x => x.PrefetchHintsSent),
                    Prefetches = Sum(x => x.Prefetches),
                    PrefetchesUsed = Sum(x => x.PrefetchesUsed),
                });
            }
        }
        return rows;
    }

    private sealed record ClusterRun(List<long>[] Outputs, List<OffloadCacheReport> Reports, long Tokens, double Seconds, long AllExpertBytes,
        long PeakBackboneBytes, long AttentionBytesCopied, int ResidentAttentionLayers);

    private static async Task<ClusterRun> RunAsync(string weightsPath, RoutingPathPredictor predictor, long[][] prompts, int newTokens,
        int budget, string policy, bool prefetch, int attentionLayers, string name, CancellationToken ct)
    {
        await using var cluster = await LocalCluster.StartAsync(Silos, (_, silo) => silo.AddMoeGrains(o =>
        {
            LanguageModelBench.ServeLm(o, weightsPath);
            o.Offload.DeviceBudgetExperts = budget;
            o.Offload.Policy = policy;
            o.Offload.Prefetch = prefetch;
            o.Offload.ResidentAttentionLayers = attentionLayers;
        }), cancellationToken: ct);
        foreach (var silo in cluster.Silos)
        {
            silo.Services.GetRequiredService<SiloRoutePredictors>().Set("lm", predictor, "cluster traces");
        }
        var outputs = new List<long>[prompts.Length];
        var sw = Stopwatch.StartNew();
        for (var i = 0; i < prompts.Length; i++)
        {
            outputs[i] = (await LanguageModelBench.GreedyAsync(cluster.GrainFactory, false, $"{name}-{budget}-{i}", prompts[i], newTokens, ct)).Tokens;
        }
        var seconds = sw.Elapsed.TotalSeconds;
        var caches = cluster.Silos.Select(s => s.Services.GetRequiredService<SiloExpertCache>()).ToList();
        foreach (var c in caches) c.Cache?.WaitForPrefetches();
        var reports = caches.Select((c, i) => c.Report($"silo{i}")).ToList();
        var allExpertBytes = budget > 0 ? caches[0].Store("lm").TotalDeviceBytes : 0;
        // The silos that ran sessions hold a backbone each.
        var served = cluster.Silos.Select(s => s.Services.GetRequiredService<SiloBackbones>().Loaded("lm")).Where(b => b is not null).ToList();
        var layers = served.FirstOrDefault()?.Spec.Layers ?? 0;
        return new ClusterRun(outputs, reports, prompts.Sum(p => p.Length + newTokens), seconds, allExpertBytes,
            served.Sum(b => b!.PeakDeviceBytes), served.Sum(b => b!.Streaming?.BytesCopied ?? 0),
            attentionLayers > 0 && attentionLayers < layers ? attentionLayers : layers);
    }
}
