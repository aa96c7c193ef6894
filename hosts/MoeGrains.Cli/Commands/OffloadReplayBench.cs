using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Models;
using MoeGrains.Offload;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using Spectre.Console;
using static TorchSharp.torch;

using static MoeGrains.Cli.Commands.OffloadBenchCommand;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// The offload bench's Mixtral replay: layers 0, 7 and 15 of the real Mixtral-8x7B routing statistics
/// (<c>traces/mixtral_crosslayer_counts.csv</c>) as three layers of stored SwiGLU experts, each request's token paths
/// sampled from its domain's counts, run through an <see cref="OffloadedMoeModel"/> for every budget and policy.
/// </summary>
internal static class OffloadReplayBench
{
    public static async Task<(object Info, List<OffloadRun> Runs)> RunAsync(string dir, int requests, int tokensPerRequest, int batchSize, bool progress, CancellationToken ct)
    {
        var data = CliPaths.Data ?? throw new FileNotFoundException("The shared data folder was not found: set MOEGRAINS_DATA.");
        var countsPath = Path.Combine(data, "traces", "mixtral_crosslayer_counts.csv");
        var domains = new[] { "arxiv", "book", "c4", "github", "wikipedia" };
        var byDomain = domains.ToDictionary(d => d, d => RoutingTrace.Load(countsPath, new RoutingTraceFilter(Selection: "top2", Domain: d)));
        var all = RoutingTrace.Load(countsPath, new RoutingTraceFilter(Selection: "top2"));
        var predictor = RoutingPathPredictor.FromTrace(all, 2);
        var layers = all.Layers.Count;
        var experts = all.Experts;

        // Stored experts for the replay: SwiGLU experts of Mixtral's shape scaled down (d_model 256, d_ff 512), one per traced expert.
        var spec = new ModelSpec("mixtral-replay", layers, experts, 256, 512, 2, "swiglu", "topk");
        var checkpointPath = Path.Combine(dir, "mixtral-replay.safetensors");
        Log(progress, $"Mixtral replay: {layers} traced layers ({string.Join(", ", all.Layers)}) x {experts} experts; writing stored experts...");
        CheckpointCommand.Create(spec, checkpointPath, 11);
        var store = ExpertWeightStore.Write(SafeTensorsFile.Open(checkpointPath), spec, Path.Combine(dir, "mixtral-store"));
        var plugins = PluginCatalog.Load(CliPaths.Plugins);

        // Requests, each from one domain; each token's path sampled from that domain's counts (layer 0 by its marginal, then each
        // next layer given the experts at the previous one).
        var random = new Random(2026);
        var paths = new int[requests][][][];
        for (var r = 0; r < requests; r++)
        {
            var trace = byDomain[domains[r % domains.Length]];
            paths[r] = [.. Enumerable.Range(0, tokensPerRequest).Select(_ => SamplePath(trace, random))];
        }
        using var inputs = randn(new long[] { Math.Max(1, batchSize), spec.DModel }, generator: new Generator(5));

        async Task<RunResult> Run(OffloadOptions options, bool schedule, bool preload)
        {
            using var model = new OffloadedMoeModel(plugins, store, CliServices.Provider, options, predictor);
            if (preload) model.Preload();
            var start = model.Cache.Stats();
            var profile = new double[requests][];
            long tokens = 0, distinct = 0, calls = 0;
            var sw = Stopwatch.StartNew();
            for (var step = 0; step < tokensPerRequest; step++)
            {
                var groups = schedule && step > 0
                    ? TokenScheduler.Group([.. profile.Select(p => (double[])p.Clone())], batchSize)
                    : TokenScheduler.InOrder(requests, batchSize);
                foreach (var group in groups)
                {
                    using var hidden = inputs.narrow(0, 0, group.Length);
                    for (var l = 0; l < layers; l++)
                    {
                        var routed = group.SelectMany(r => paths[r][step][l]).ToArray();
                        var routing = new RoutingResult(group.Length, 2, routed, [.. routed.Select(_ => 0.5f)]);
                        using var output = await model.ForwardLayerAsync(l, hidden, null, routing, ct);
                        distinct += output.Calls.Length;
                        calls++;
                    }
                    tokens += group.Length;
                }
                // What the scheduler knows of each request: the experts its tokens used so far (decayed).
                for (var r = 0; r < requests; r++)
                {
                    var p = profile[r] ??= new double[layers * experts];
                    for (var j = 0; j < p.Length; j++) p[j] *= 0.7;
                    for (var l = 0; l < layers; l++) foreach (var e in paths[r][step][l]) p[l * experts + e] += 0.3;
                }
            }
            var seconds = sw.Elapsed.TotalSeconds;
            model.Cache.WaitForPrefetches();
            return new RunResult(Minus(model.Cache.Stats(), start), model.Prediction, tokens, seconds, calls == 0 ? 0 : (double)distinct / calls, [],
                model.PeakDeviceExpertBytes, 0, store.TotalDeviceBytes);
        }

        Log(progress, $"Mixtral replay: everything resident, {requests} requests x {tokensPerRequest} tokens, batches of {batchSize}...");
        var resident = await Run(new OffloadOptions { Budget = new(store.Count) }, false, true);
        var runs = new List<OffloadRun>();
        foreach (var fraction in Budgets)
        {
            foreach (var policy in Policies)
            {
                if (!Want($"mixtral:{fraction}:{policy}")) continue;
                Log(progress, $"Mixtral replay: budget {fraction:P0}, {policy}...");
                var options = new OffloadOptions { Budget = new(BudgetExperts(fraction, store.Count)), Policy = PolicyOf(policy) };
                var r = await Run(options, policy.EndsWith("scheduling", StringComparison.Ordinal), false);
                runs.Add(ToRun("mixtral-replay", fraction, policy, r, resident.TokensPerS, null));
            }
        }
        var info = new
        {
            source = "traces/mixtral_crosslayer_counts.csv (top2, five domains)", traced_layers = all.Layers, experts, requests,
            tokens_per_request = tokensPerRequest, batch = batchSize, expert_bytes = store.Entries.First().DeviceBytes,
            resident_tokens_per_s = resident.TokensPerS, resident_distinct_experts_per_batch_layer = resident.Distinct,
        };
        return (info, runs);
    }

    private static int[][] SamplePath(RoutingTrace trace, Random random)
    {
        var n = trace.Experts;
        var layers = trace.Layers.Count;
        var path = new int[layers][];
        var first = trace.Transitions[0];
        path[0] = Draw(Enumerable.Range(0, n).Select(a => Enumerable.Range(0, n).Sum(b => first.Counts[a * n + b])).ToArray(), 2, random);
        for (var l = 1; l < layers; l++)
        {
            var t = trace.Transitions[l - 1];
            var w = new double[n];
            foreach (var a in path[l - 1])
            {
                var row = Enumerable.Range(0, n).Sum(b => t.Counts[a * n + b]);
                for (var b = 0; b < n; b++) w[b] += row > 0 ? t.Counts[a * n + b] / row : 1.0 / n;
            }
            path[l] = Draw(w, 2, random);
        }
        return path;
    }

    private static int[] Draw(double[] weights, int k, Random random)
    {
        var w = (double[])weights.Clone();
        var chosen = new int[k];
        for (var i = 0; i < k; i++)
        {
            var x = random.NextDouble() * w.Sum();
            var pick = 0;
            for (; pick < w.Length - 1; pick++)
            {
                x -= w[pick];
                if (x < 0) break;
            }
            chosen[i] = pick;
            w[pick] = 0;
        }
        return chosen;
    }
}
