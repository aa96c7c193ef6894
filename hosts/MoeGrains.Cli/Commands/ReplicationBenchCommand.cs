using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Placement;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe bench replication</c>: hot-expert replication (DeepSeek EPLB) applied live to the reference model on a local
/// cluster. Concurrent greedy sessions run on held-out text under the default placement while the cluster records their
/// routes; the per-expert loads from those routes give the replication plan, which is applied to the running cluster
/// (experts move, replicas activate); then the same sessions run again. Per-silo expert tokens are counted on the silos.
/// </summary>
internal static class ReplicationBenchCommand
{
    /// <summary>Adds <c>replication</c> under <c>bench</c>.</summary>
    public static void Register(RootCommand root) => root.Subcommands.First(c => c.Name == "bench").Add(Create());

    internal sealed record Phase(string Name, int DecodedTokens, long ExpertTokens, long[] SiloTokens, double SiloImbalance, double MeanLayerImbalance,
        double MaxLayerImbalance, double TokensPerSecond, bool SameTokensAsBefore);

    internal sealed record ClusterReport(int Silos, int Slots, int TracedTokens, int ExtraReplicas, int ExpertsMoved, double ApplySeconds,
        double PredictedLayerImbalanceBefore, double PredictedLayerImbalanceAfter, string[] ReplicatedExperts, Phase Before, Phase After);

    internal sealed record Report(string Benchmark, string Checkpoint, object Model, string Machine, int Sessions, int PromptTokens, int DecodeTokens,
        ClusterReport[] Clusters);

    private static Command Create()
    {
        var (checkpoint, data) = (LanguageModelBench.CheckpointOption(), LanguageModelBench.DataOption());
        var silos = new Option<int[]>("--silos") { Description = "Cluster sizes", DefaultValueFactory = _ => [2], AllowMultipleArgumentsPerToken = true };
        var sessions = new Option<int>("--sessions") { Description = "Concurrent sessions per phase", DefaultValueFactory = _ => 6 };
        var promptTokens = new Option<int>("--prompt") { Description = "Prompt tokens per session", DefaultValueFactory = _ => 32 };
        var tokens = new Option<int>("--tokens") { Description = "Greedy tokens decoded per session", DefaultValueFactory = _ => 24 };
        var slots = new Option<int>("--slots") { Description = "Expert activations per layer after replication (0: the experts rounded up to the silos, plus one per silo)", DefaultValueFactory = _ => 0 };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 1 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var command = new Command("replication", "Hot-expert replication (EPLB) from live loads on the reference model: per-silo expert load before and after")
        {
            checkpoint, data, silos, sessions, promptTokens, tokens, slots, threads, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            try
            {
                var report = await Run(parse.GetValue(checkpoint)!, parse.GetValue(data), parse.GetValue(silos)!, Math.Max(1, parse.GetValue(sessions)),
                    Math.Max(2, parse.GetValue(promptTokens)), Math.Max(1, parse.GetValue(tokens)), parse.GetValue(slots), parse.GetValue(threads), ct);
                return BenchCommands.Output(report, parse.GetValue(json), Print);
            }
            catch (Exception e) when (LanguageModelBench.IsUserError(e))
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
        });
        return command;
    }

    private static async Task<Report> Run(string checkpoint, string? dataPath, int[] siloCounts, int sessions, int promptTokens, int tokens, int slotOption,
        int threads, CancellationToken ct)
    {
        if (siloCounts.Any(s => s < 2)) throw new ArgumentException("--silos: replication needs at least 2 silos.");
        var data = await LanguageModelBench.LoadAsync(checkpoint, dataPath, threads, ct);
        var (path, metadata) = (data.WeightsPath, data.Metadata);
        var prompts = Enumerable.Range(1, sessions).Select(i => LanguageModelBench.Window(data.HeldOut, i, promptTokens)).ToArray();

        var reports = new List<ClusterReport>();
        foreach (var count in siloCounts)
        {
            Console.Error.WriteLine($"{count} silos: starting the cluster...");
            await using var cluster = await LanguageModelBench.StartTracedClusterAsync(count, path, 1, ct);
            var grains = cluster.GrainFactory;
            var spec = await grains.GetGrain<IClusterInfoGrain>(0).Model("lm");
            var layers = Enumerable.Range(0, spec.Layers).ToArray();
            var slots = slotOption > 0 ? slotOption : ReplicaPlacement.DefaultSlots(spec.Experts, count);

            Console.Error.WriteLine($"{count} silos: {sessions} concurrent sessions, default placement...");
            var (before, outputs) = await RunPhase(grains, "before", "b", prompts, tokens, layers, count, null, ct);

            await LanguageModelBench.TracesCollectedAsync(cluster, ct);
            var (load, traced) = await ExpertReplicas.LiveLoadsAsync(grains, "lm", layers, spec.Experts);
            var placement = ReplicaPlacement.Balance(load, layers, count, slots);
            var unreplicated = ReplicaPlacement.Single(new PlacementPlan(layers, spec.Experts, count,
                [.. layers.SelectMany(l => Enumerable.Range(0, spec.Experts).Select(e => (e + l) % count))]));
            Console.Error.WriteLine($"{count} silos: {traced} traced tokens; applying the replication plan ({slots} activations per layer)...");
            var applied = await ExpertReplicas.ApplyAsync(grains, "lm", placement, TimeSpan.FromMinutes(5), ct);

            Console.Error.WriteLine($"{count} silos: the same sessions with replication...");
            var (after, _) = await RunPhase(grains, "replicated", "r", prompts, tokens, layers, count, outputs, ct);
            reports.Add(new ClusterReport(count, slots, traced, applied.Replicas, applied.ExpertsMoved, applied.Seconds,
                unreplicated.SiloLoads(load).Average(ReplicaPlacement.Imbalance), placement.SiloLoads(load).Average(ReplicaPlacement.Imbalance),
                [.. layers.SelectMany(l => Enumerable.Range(0, spec.Experts).Where(e => placement.ReplicaSilos[l * spec.Experts + e].Length > 1)
                    .Select(e => $"{l}/{e} x{placement.ReplicaSilos[l * spec.Experts + e].Length} on {string.Join("+", placement.ReplicaSilos[l * spec.Experts + e])}"))],
                before, after));
        }
        return new Report("replication", path, LanguageModelBench.ModelInfo(metadata), LanguageModelBench.Machine(threads), sessions, promptTokens, tokens, [.. reports]);
    }

    // Runs the sessions concurrently and counts the expert tokens each silo computed meanwhile, per layer.
    private static async Task<(Phase Phase, List<long>[] Outputs)> RunPhase(IGrainFactory grains, string name, string tag, long[][] prompts, int tokens,
        int[] layers, int silos, List<long>[]? reference, CancellationToken ct)
    {
        var start = await Counts(grains);
        var sw = Stopwatch.StartNew();
        var outputs = await Task.WhenAll(prompts.Select(async (p, i) => (await LanguageModelBench.GreedyAsync(grains, false, $"{tag}-{i}", p, tokens, ct)).Tokens));
        var seconds = sw.Elapsed.TotalSeconds;
        var end = await Counts(grains);
        var hosts = end.Keys.Order(StringComparer.Ordinal).ToArray();
        long Delta(string host, int? layer) => end[host].Where(kv => layer is null || ExpertKey.ParseExpert(kv.Key).Layer == layer)
            .Sum(kv => kv.Value - (start.TryGetValue(host, out var s) ? s.GetValueOrDefault(kv.Key) : 0));
        var siloTokens = hosts.Select(h => Delta(h, null)).ToArray();
        var perLayer = layers.Select(l => ReplicaPlacement.Imbalance([.. hosts.Select(h => (double)Delta(h, l))])).ToArray();
        var decoded = outputs.Sum(o => o.Count);
        var same = reference is null || outputs.Select((o, i) => o.SequenceEqual(reference[i])).All(x => x);
        return (new Phase(name, decoded, siloTokens.Sum(), siloTokens, ReplicaPlacement.Imbalance([.. siloTokens.Select(x => (double)x)]),
            perLayer.Average(), perLayer.Max(), decoded / seconds, same), outputs);
    }

    private static async Task<Dictionary<string, Dictionary<string, long>>> Counts(IGrainFactory grains)
    {
        var hosts = (await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Keys.ToArray();
        var counts = await Task.WhenAll(hosts.Select(h => grains.GetGrain<IPlacementAgentGrain>(h.ToParsableString()).ExpertTokens("lm")));
        return hosts.Select((h, i) => (h, counts[i])).ToDictionary(x => x.h.ToString(), x => x.Item2, StringComparer.Ordinal);
    }

    private static void Print(Report report)
    {
        var table = new Table().AddColumns("silos", "phase", "expert tokens per silo", "silo max/mean", "layer max/mean (mean, max)", "tokens/s", "same tokens");
        foreach (var r in report.Clusters)
        {
            foreach (var p in new[] { r.Before, r.After })
            {
                table.AddRow($"{r.Silos}", p.Name, string.Join(" / ", p.SiloTokens), $"{p.SiloImbalance:F3}", $"{p.MeanLayerImbalance:F3}, {p.MaxLayerImbalance:F3}",
                    $"{p.TokensPerSecond:F1}", p.SameTokensAsBefore ? "yes" : "NO");
            }
        }
        AnsiConsole.Write(table);
        foreach (var r in report.Clusters)
        {
            AnsiConsole.MarkupLine(Markup.Escape($"{r.Silos} silos: {r.TracedTokens} traced tokens, {r.Slots} activations per layer, {r.ExtraReplicas} extra replicas " +
                $"({string.Join(", ", r.ReplicatedExperts)}), {r.ExpertsMoved} experts moved, applied in {r.ApplySeconds:F1} s; EPLB's expected layer max/mean " +
                $"{r.PredictedLayerImbalanceBefore:F3} -> {r.PredictedLayerImbalanceAfter:F3}"));
        }
    }
}
