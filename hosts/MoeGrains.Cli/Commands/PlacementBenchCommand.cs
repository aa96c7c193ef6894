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
/// <c>moe bench placement</c>: the reference language model on a live local cluster of 2 and 3 silos. Routes are recorded
/// from the running layers and exported through the routes stream; the affinity plan is solved from them and applied to
/// the running cluster (experts move); then greedy generation on held-out prompts is measured four ways: default
/// placement and the plan, each with the default dispatch and with context-coherent dispatch.
/// </summary>
internal static class PlacementBenchCommand
{
    /// <summary>Adds <c>placement</c> under <c>bench</c>.</summary>
    public static void Register(RootCommand root)
    {
        var bench = root.Subcommands.First(c => c.Name == "bench");
        bench.Add(Create());
    }

    internal sealed record PlacementCase(int Silos, string Placement, string Dispatch, int Sessions, int DecodedTokens,
        double CrossSiloHopsPerToken, double BytesPerToken, double TokensPerSecond, bool SameTokensAsDefault);

    internal sealed record SiloReport(int Silos, int TracedTokens, double TransitionsCrossingRoundRobin, double TransitionsCrossingPlan,
        double SolveSeconds, string SolveMethod, int ExpertsMoved, double MoveSeconds, double HopReductionPlanCoherent, double HopReductionPlan,
        double HopReductionCoherent, PlacementCase[] Cases)
    {
        public double CoherentObjectiveRoundRobin { get; init; }

        public double CoherentObjectivePlan { get; init; }

        public int ExpertsMovedCoherentPlan { get; init; }

        public double HopReductionCoherentPlanCoherent { get; init; }
    }

    internal sealed record Report(string Benchmark, string Checkpoint, object Model, string Machine, int PromptTokens, int DecodeTokens,
        double SamplingRate, SiloReport[] Clusters);

    private static Command Create()
    {
        var (checkpoint, data) = (LanguageModelBench.CheckpointOption(), LanguageModelBench.DataOption());
        var silos = new Option<int[]>("--silos") { Description = "Cluster sizes", DefaultValueFactory = _ => [2, 3], AllowMultipleArgumentsPerToken = true };
        var traceSessions = new Option<int>("--trace-sessions") { Description = "Sessions run to record the traces the plan is solved from", DefaultValueFactory = _ => 6 };
        var sessions = new Option<int>("--sessions") { Description = "Held-out sessions measured per configuration", DefaultValueFactory = _ => 3 };
        var promptTokens = new Option<int>("--prompt") { Description = "Prompt tokens per session", DefaultValueFactory = _ => 32 };
        var tokens = new Option<int>("--tokens") { Description = "Greedy tokens decoded per session", DefaultValueFactory = _ => 32 };
        var rate = new Option<double>("--sampling-rate") { Description = "Share of tokens whose routes are recorded", DefaultValueFactory = _ => 1.0 };
        var timeLimit = new Option<double>("--time-limit-s") { Description = "Solver time limit", DefaultValueFactory = _ => 10 };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 1 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var command = new Command("placement", "Default placement vs the affinity plan from the model's own traces, with and without context-coherent dispatch, on live 2- and 3-silo clusters")
        {
            checkpoint, data, silos, traceSessions, sessions, promptTokens, tokens, rate, timeLimit, threads, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            try
            {
                var report = await Run(parse.GetValue(checkpoint)!, parse.GetValue(data), parse.GetValue(silos)!, Math.Max(1, parse.GetValue(traceSessions)),
                    Math.Max(1, parse.GetValue(sessions)), Math.Max(2, parse.GetValue(promptTokens)), Math.Max(1, parse.GetValue(tokens)), parse.GetValue(rate),
                    parse.GetValue(timeLimit), parse.GetValue(threads), ct); // progress on stderr
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

    private static async Task<Report> Run(string checkpoint, string? dataPath, int[] siloCounts, int traceSessions, int sessions, int promptTokens, int tokens,
        double samplingRate, double timeLimit, int threads, CancellationToken ct)
    {
        if (!(samplingRate is > 0 and <= 1)) throw new ArgumentException("--sampling-rate must be in (0, 1].");
        var data = await LanguageModelBench.LoadAsync(checkpoint, dataPath, threads, ct);
        var (path, metadata) = (data.WeightsPath, data.Metadata);
        var training = data.Tokenizer.Encode(data.Text[..Math.Min(data.Text.Length, 200_000)]).Select(t => (long)t).ToArray();
        var tracePrompts = Enumerable.Range(0, traceSessions).Select(i => LanguageModelBench.Window(training, i + 1, promptTokens)).ToArray();
        var evalPrompts = Enumerable.Range(0, sessions).Select(i => LanguageModelBench.Window(data.HeldOut, i + 1, promptTokens)).ToArray();

        var reports = new List<SiloReport>();
        foreach (var count in siloCounts)
        {
            Console.Error.WriteLine($"{count} silos: starting the cluster...");
            await using var cluster = await LanguageModelBench.StartTracedClusterAsync(count, path, samplingRate, ct);
            var grains = cluster.GrainFactory;
            var info = grains.GetGrain<IClusterInfoGrain>(0);
            var spec = await info.Model("lm");

            // 1. Traces from the running layers (default placement), exported through the routes stream.
            Console.Error.WriteLine($"{count} silos: recording routes of {traceSessions} sessions...");
            foreach (var (prompt, i) in tracePrompts.Select((p, i) => (p, i)))
            {
                await LanguageModelBench.GreedyAsync(grains, coherent: false, $"trace-{i}", prompt, tokens, ct);
            }
            var collector = await LanguageModelBench.TracesCollectedAsync(cluster, ct);
            var export = await collector.Export();
            var trace = CrossLayerCountsFile.Read(new StringReader(export.CountsCsv), "routes stream", experts: spec.Experts);

            // 2. The affinity plans: ExFlow's (all pairs of experts of consecutive layers) and the coherent dispatch's own
            //    objective (top-1 moves and the other experts' calls), both from the exported routes.
            var problem = new PlacementProblem(trace, count);
            var solution = AffinityPlacementSolver.Solve(problem, new AffinityPlacementOptions { TimeLimitSeconds = timeLimit }, ct);
            Console.Error.WriteLine($"{count} silos: {export.Tokens} traced tokens; transitions crossing silos: round-robin {problem.CrossFraction(problem.RoundRobin()):F3}, plan {solution.CrossFraction:F3} ({solution.Method}, {solution.Seconds:F1} s)");
            var routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes stream");
            var coherentProblem = new PlacementProblem(CoherentDispatchTrace.FromTokenRoutes(routes, spec.Experts), count);
            var coherentSolution = AffinityPlacementSolver.Solve(coherentProblem, new AffinityPlacementOptions { TimeLimitSeconds = timeLimit }, ct);
            Console.Error.WriteLine($"{count} silos: coherent-dispatch objective: round-robin {coherentProblem.CrossFraction(coherentProblem.RoundRobin()):F3}, plan {coherentSolution.CrossFraction:F3} ({coherentSolution.Method})");

            // 3. Held-out generation: default placement, default and coherent dispatch.
            var cases = new List<PlacementCase>();
            var reference = await Measure(grains, count, "default", false, "dflt", evalPrompts, tokens, null, cases, ct);
            await Measure(grains, count, "default", true, "dflt-c", evalPrompts, tokens, reference, cases, ct);

            // 4. The plan applied to the running cluster, then the same two dispatches.
            Console.Error.WriteLine($"{count} silos: applying the plan (moving experts)...");
            var move = await ExpertMoves.ApplyAsync(grains, "lm", solution.Plan, TimeSpan.FromMinutes(5), ct);
            await Measure(grains, count, "affinity", false, "plan", evalPrompts, tokens, reference, cases, ct);
            await Measure(grains, count, "affinity", true, "plan-c", evalPrompts, tokens, reference, cases, ct);
            var move2 = await ExpertMoves.ApplyAsync(grains, "lm", coherentSolution.Plan, TimeSpan.FromMinutes(5), ct);
            await Measure(grains, count, "affinity-coherent-objective", true, "cplan-c", evalPrompts, tokens, reference, cases, ct);

            double Hops(string placement, string dispatch) => cases.Single(c => c.Placement == placement && c.Dispatch == dispatch).CrossSiloHopsPerToken;
            var baseline = Hops("default", "default");
            double Reduction(double h) => baseline > 0 ? 1 - h / baseline : 0;
            reports.Add(new SiloReport(count, export.Tokens, problem.CrossFraction(problem.RoundRobin()), solution.CrossFraction, solution.Seconds, solution.Method,
                move.Moved, move.Seconds, Reduction(Hops("affinity", "context-coherent")), Reduction(Hops("affinity", "default")),
                Reduction(Hops("default", "context-coherent")), [.. cases])
            {
                CoherentObjectiveRoundRobin = coherentProblem.CrossFraction(coherentProblem.RoundRobin()),
                CoherentObjectivePlan = coherentSolution.CrossFraction,
                ExpertsMovedCoherentPlan = move2.Moved,
                HopReductionCoherentPlanCoherent = Reduction(Hops("affinity-coherent-objective", "context-coherent")),
            });
        }
        return new Report("placement", path, LanguageModelBench.ModelInfo(metadata), LanguageModelBench.Machine(threads), promptTokens, tokens, samplingRate, [.. reports]);
    }

    private static async Task<List<long>[]> Measure(IGrainFactory grains, int silos, string placement, bool coherent, string tag, long[][] prompts, int tokens,
        List<long>[]? reference, List<PlacementCase> cases, CancellationToken ct)
    {
        var outputs = new List<long>[prompts.Length];
        long messages = 0, bytes = 0, decoded = 0;
        var seconds = 0.0;
        for (var i = 0; i < prompts.Length; i++)
        {
            var run = await LanguageModelBench.GreedyAsync(grains, coherent, $"{tag}-{i}", prompts[i], tokens, ct);
            outputs[i] = run.Tokens;
            messages += run.Messages;
            bytes += run.Bytes;
            decoded += run.Tokens.Count;
            seconds += run.Seconds;
        }
        var same = reference is null || outputs.Select((o, i) => o.SequenceEqual(reference[i])).All(x => x);
        cases.Add(new PlacementCase(silos, placement, coherent ? "context-coherent" : "default", prompts.Length, (int)decoded,
            (double)messages / decoded, (double)bytes / decoded, decoded / seconds, same));
        return outputs;
    }

    private static void Print(Report report)
    {
        var table = new Table().AddColumns("silos", "placement", "dispatch", "hops/token", "bytes/token", "tokens/s", "same tokens");
        foreach (var c in report.Clusters.SelectMany(r => r.Cases))
        {
            table.AddRow($"{c.Silos}", c.Placement, c.Dispatch, $"{c.CrossSiloHopsPerToken:F2}", $"{c.BytesPerToken:F0}", $"{c.TokensPerSecond:F1}", c.SameTokensAsDefault ? "yes" : "NO");
        }
        AnsiConsole.Write(table);
        foreach (var r in report.Clusters)
        {
            AnsiConsole.MarkupLine($"{r.Silos} silos: {r.TracedTokens} traced tokens; transitions crossing silos {r.TransitionsCrossingRoundRobin:F3} (round-robin) -> {r.TransitionsCrossingPlan:F3} (plan, {r.SolveMethod}); " +
                $"{r.ExpertsMoved} experts moved in {r.MoveSeconds:F1} s; hops/token vs default: plan {r.HopReductionPlan:P1}, coherent {r.HopReductionCoherent:P1}, plan + coherent {r.HopReductionPlanCoherent:P1}, " +
                $"coherent-objective plan + coherent {r.HopReductionCoherentPlanCoherent:P1} fewer");
        }
    }
}
