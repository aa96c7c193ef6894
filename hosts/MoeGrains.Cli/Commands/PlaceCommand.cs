using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoeGrains.Placement;
using Spectre.Console;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe place</c>: affinity-aware placement of a routing trace's experts on silos, compared with round-robin and random
/// placement; <c>moe place eplb</c>: hot-expert replication (DeepSeek EPLB) of per-expert loads.
/// </summary>
internal static class PlaceCommand
{
    public static Command Create()
    {
        var trace = new Option<string>("--trace") { Description = "Routing trace: cross-layer counts CSV, per-token routes CSV or JSON lines" };
        var silos = new Option<int>("--silos") { Description = "Number of silos G", DefaultValueFactory = _ => 2 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var timeLimit = new Option<double>("--time-limit-s") { Description = "Solver time limit in seconds", DefaultValueFactory = _ => AffinityPlacementOptions.DEFAULT_TIME_LIMIT_SECONDS };
        var selection = new Option<string>("--selection") { Description = "Counts files: which selection (top1, top2; * for a file with one)", DefaultValueFactory = _ => "top1" };
        var domain = new Option<string>("--domain") { Description = "Counts files: one domain, or * to add all up", DefaultValueFactory = _ => "*" };
        var model = new Option<string>("--model") { Description = "Counts files: which model (* for a file with one)", DefaultValueFactory = _ => "*" };
        var experts = new Option<int?>("--experts") { Description = "Experts per layer (default: the highest id in the trace + 1)" };
        var workers = new Option<int>("--workers") { Description = "CP-SAT threads (0: one per core, at most 8; 1 is deterministic)" };
        var seed = new Option<int>("--seed") { Description = "Seed of the solver and of the random placements", DefaultValueFactory = _ => 1 };
        var samples = new Option<int>("--random-samples") { Description = "Random plans sampled to check the exact random expectation", DefaultValueFactory = _ => 1000 };
        var expertBytes = new Option<long?>("--expert-bytes") { Description = "Memory of one expert (with --silo-budget-bytes)" };
        var budgets = new Option<long[]>("--silo-budget-bytes") { Description = "Each silo's memory budget for experts (one value for all, or G values)", AllowMultipleArgumentsPerToken = true };
        var hint = new Option<string?>("--hint") { Description = "A plan CSV (layer,expert,silo) to start from" };
        var output = new Option<string?>("--out") { Description = "Write the solver's plan here as CSV layer,expert,silo" };
        var command = new Command("place", "Place experts on silos from a routing trace: cross-silo transitions of round-robin, random and the CP-SAT solver")
        {
            trace, silos, json, timeLimit, selection, domain, model, experts, workers, seed, samples, expertBytes, budgets, hint, output, Eplb(),
        };
        command.SetAction((parse, ct) =>
        {
            var path = parse.GetValue(trace);
            var g = parse.GetValue(silos);
            if (string.IsNullOrWhiteSpace(path))
            {
                Console.Error.WriteLine("--trace is required: a cross-layer counts CSV (e.g. ../shared/data/traces/mixtral_crosslayer_counts.csv) or a routes file.");
                return Task.FromResult(2);
            }
            if (!File.Exists(path))
            {
                Console.Error.WriteLine($"Trace file not found: {path}");
                return Task.FromResult(2);
            }
            if (g < 1)
            {
                Console.Error.WriteLine("--silos must be at least 1.");
                return Task.FromResult(2);
            }
            try
            {
                var filter = new RoutingTraceFilter(parse.GetValue(model), parse.GetValue(selection), parse.GetValue(domain));
                var routing = RoutingTrace.Load(path, filter, parse.GetValue(experts));
                var (bytes, budget) = Memory(routing, g, parse.GetValue(expertBytes), parse.GetValue(budgets));
                var problem = new PlacementProblem(routing, g, bytes, budget);
                var options = new AffinityPlacementOptions
                {
                    TimeLimitSeconds = parse.GetValue(timeLimit),
                    Workers = parse.GetValue(workers),
                    Seed = parse.GetValue(seed),
                };
                if (parse.GetValue(hint) is { } hintPath)
                {
                    using var reader = new StreamReader(hintPath);
                    options.Hint = PlacementPlan.ReadCsv(reader, hintPath);
                }
                var report = Run(problem, options, path, filter, Math.Max(0, parse.GetValue(samples)), ct);
                if (parse.GetValue(output) is { } outPath)
                {
                    using var writer = new StreamWriter(outPath);
                    report.Solution.Plan.WriteCsv(writer);
                }
                if (parse.GetValue(json))
                {
                    Console.WriteLine(JsonSerializer.Serialize(report.Json(), BenchCommands.JsonOptions));
                }
                else
                {
                    Print(report);
                }
                return Task.FromResult(0);
            }
            catch (Exception e) when (e is FormatException or IOException or ArgumentException or PlacementInfeasibleException)
            {
                Console.Error.WriteLine(e.Message);
                return Task.FromResult(2);
            }
        });
        return command;
    }

    private static (long[]? Bytes, long[]? Budget) Memory(RoutingTrace trace, int silos, long? expertBytes, long[]? budgets)
    {
        if (budgets is not { Length: > 0 })
        {
            return (null, null);
        }
        if (expertBytes is not > 0)
        {
            throw new ArgumentException("--silo-budget-bytes needs --expert-bytes (the memory of one expert).");
        }
        if (budgets.Length != 1 && budgets.Length != silos)
        {
            throw new ArgumentException($"--silo-budget-bytes takes one value or {silos} (one per silo), got {budgets.Length}.");
        }
        var bytes = Enumerable.Repeat(expertBytes.Value, trace.Layers.Count * trace.Experts).ToArray();
        return (bytes, budgets.Length == 1 ? Enumerable.Repeat(budgets[0], silos).ToArray() : budgets);
    }

    internal sealed record PlaceReport(string Trace, RoutingTraceFilter Filter, PlacementProblem Problem, double RoundRobin, double Random,
        double RandomSampled, int RandomSamples, PlacementSolution Solution, double RoundRobinSeconds, double? Exact, double ExactSeconds, int MaxExactVariables)
    {
        public object Json() => new Dictionary<string, object?>
        {
            ["trace"] = Trace,
            ["model"] = Filter.Model,
            ["selection"] = Filter.Selection,
            ["domain"] = Filter.Domain,
            ["layers"] = Problem.Layers,
            ["experts"] = Problem.Experts,
            ["silos"] = Problem.Silos,
            ["transitions"] = Problem.TotalWeight,
            ["affinity_concentration"] = Problem.Trace.Transitions.ToDictionary(t => $"{t.LayerFrom}->{t.LayerTo}", t => Math.Round(t.Concentration(), 4)),
            ["round_robin"] = Round(RoundRobin),
            ["random"] = Round(Random),
            ["random_sampled"] = RandomSamples > 0 ? Round(RandomSampled) : null,
            ["random_samples"] = RandomSamples,
            ["solver"] = Round(Solution.CrossFraction),
            ["solve_seconds"] = Math.Round(Solution.Seconds, 3),
            ["best_found_seconds"] = Math.Round(Solution.BestFoundSeconds, 3),
            ["method"] = Solution.Method,
            ["cp_sat_ran"] = Solution.Variables <= MaxExactVariables,
            ["optimal"] = Solution.Optimal,
            ["lower_bound"] = Round(Solution.LowerBound),
            ["local_search"] = Round(Solution.HeuristicCrossFraction),
            ["exact_optimum"] = Exact is { } x ? Round(x) : null,
            ["exact_seconds"] = Exact is null ? null : Math.Round(ExactSeconds, 3),
            ["reduction_vs_random"] = Round(Reduction(Random)),
            ["reduction_vs_round_robin"] = Round(Reduction(RoundRobin)),
            ["plan"] = Enumerable.Range(0, Problem.Layers.Count)
                .ToDictionary(i => Problem.Layers[i].ToString(CultureInfo.InvariantCulture), i => Solution.Plan.Assignment.Skip(i * Problem.Experts).Take(Problem.Experts).ToArray()),
        };

        public double Reduction(double baseline) => baseline > 0 ? 1 - Solution.CrossFraction / baseline : 0;

        private static double Round(double v) => double.IsFinite(v) ? Math.Round(v, 6) : 0;
    }

    internal static PlaceReport Run(PlacementProblem problem, AffinityPlacementOptions options, string trace, RoutingTraceFilter filter, int samples,
        CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var roundRobin = problem.CrossFraction(problem.RoundRobin());
        var roundRobinSeconds = clock.Elapsed.TotalSeconds;
        var random = new Random(options.Seed);
        var sampled = samples == 0 ? double.NaN : Enumerable.Range(0, samples).Average(_ => problem.CrossFraction(problem.Random(random)));
        var solution = AffinityPlacementSolver.Solve(problem, options, ct);
        // Small chain-shaped traces (like the Mixtral counts) also get their proven optimum, to show the solver's gap.
        clock.Restart();
        var exact = ChainPlacementOptimum.TrySolve(problem);
        return new PlaceReport(trace, filter, problem, roundRobin, problem.ExpectedRandomCrossFraction(), sampled, samples, solution, roundRobinSeconds,
            exact is null ? null : problem.CrossFraction(exact), clock.Elapsed.TotalSeconds, options.MaxExactVariables);
    }

    private static void Print(PlaceReport r)
    {
        var p = r.Problem;
        var title = $"{Path.GetFileName(r.Trace)}: layers {string.Join(", ", p.Layers)}, {p.Experts} experts, {p.Silos} silos, {p.TotalWeight:N0} transitions";
        var table = new Table().Title(Markup.Escape(title)).AddColumns("placement", "cross-silo fraction", "vs random", "seconds");
        table.AddRow("round-robin", $"{r.RoundRobin:F4}", $"{1 - r.RoundRobin / r.Random:P1}", $"{r.RoundRobinSeconds:F3}");
        table.AddRow(r.RandomSamples > 0 ? $"random (exact; {r.RandomSamples} samples: {r.RandomSampled:F4})" : "random (exact)", $"{r.Random:F4}", "-", "-");
        var s = r.Solution;
        var exactRan = s.Variables <= r.MaxExactVariables;
        var status = s.Method + (s.Optimal ? ", proven optimal" : exactRan ? $", cp-sat bound {s.LowerBound:F4}" : ", cp-sat skipped (too large)");
        table.AddRow($"solver ({status}; best found at {s.BestFoundSeconds:F3} s)", $"{s.CrossFraction:F4}", $"{r.Reduction(r.Random):P1}", $"{s.Seconds:F3}");
        if (r.Exact is { } exact)
        {
            table.AddRow("proven optimum (exhaustive, chain)", $"{exact:F4}", $"{1 - exact / r.Random:P1}", $"{r.ExactSeconds:F3}");
        }
        AnsiConsole.Write(table);
        foreach (var t in p.Trace.Transitions)
        {
            AnsiConsole.MarkupLine($"[grey]affinity {t.LayerFrom}->{t.LayerTo}: mean max P(next | expert) = {t.Concentration():F3} (uniform {1.0 / p.Experts:F3})[/]");
        }
        for (var i = 0; i < p.Layers.Count; i++)
        {
            AnsiConsole.MarkupLine($"[grey]layer {p.Layers[i]}: silos {string.Join(' ', s.Plan.Assignment.Skip(i * p.Experts).Take(p.Experts))}[/]");
        }
    }

    private static Command Eplb()
    {
        var loads = new Option<string>("--loads") { Description = "Per-layer expert loads as JSON, e.g. [[90,132,40],[20,107,104]]", Required = true };
        var replicas = new Option<int>("--replicas") { Description = "Physical expert slots per layer", Required = true };
        var groups = new Option<int>("--groups") { Description = "Expert groups (a group stays on one node)", DefaultValueFactory = _ => 1 };
        var nodes = new Option<int>("--nodes") { Description = "Nodes", DefaultValueFactory = _ => 1 };
        var gpus = new Option<int>("--gpus") { Description = "GPUs (silos) in all", Required = true };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var command = new Command("eplb", "Replicate hot experts and pack the replicas onto nodes and GPUs (DeepSeek EPLB)")
        {
            loads, replicas, groups, nodes, gpus, json,
        };
        command.SetAction(parse =>
        {
            try
            {
                var load = JsonSerializer.Deserialize<double[][]>(parse.GetValue(loads)!) ?? throw new ArgumentException("--loads is empty.");
                var (r, g) = (parse.GetValue(replicas), parse.GetValue(gpus));
                var plan = ExpertReplication.Rebalance(load, r, parse.GetValue(groups), parse.GetValue(nodes), g);
                var gpuLoads = plan.GpuLoads(load, g);
                var imbalance = gpuLoads.Select(l => l.Average() > 0 ? l.Max() / l.Average() : 1).ToArray();
                if (parse.GetValue(json))
                {
                    Console.WriteLine(JsonSerializer.Serialize(new
                    {
                        phy2log = plan.PhysicalToLogical,
                        replica_rank = plan.ReplicaRank,
                        logcnt = plan.ReplicaCount,
                        gpu_loads = gpuLoads,
                        max_over_mean = imbalance.Select(x => Math.Round(x, 4)),
                    }, BenchCommands.JsonOptions));
                    return 0;
                }
                for (var l = 0; l < load.Length; l++)
                {
                    var table = new Table().Title($"layer {l}: max/mean GPU load {imbalance[l]:F3}").AddColumns("gpu", "experts (replica)", "load");
                    var perGpu = r / g;
                    for (var gpu = 0; gpu < g; gpu++)
                    {
                        var slots = Enumerable.Range(gpu * perGpu, perGpu).Select(s => $"{plan.PhysicalToLogical[l][s]}({plan.ReplicaRank[l][s]})");
                        table.AddRow($"{gpu}", string.Join(' ', slots), $"{gpuLoads[l][gpu]:F1}");
                    }
                    AnsiConsole.Write(table);
                }
                return 0;
            }
            catch (Exception e) when (e is JsonException or ArgumentException)
            {
                Console.Error.WriteLine(e.Message);
                return 2;
            }
        });
        return command;
    }
}
