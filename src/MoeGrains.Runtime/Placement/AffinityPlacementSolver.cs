using System.Diagnostics;
using System.Globalization;
using Google.OrTools.Sat;

namespace MoeGrains.Placement;

/// <summary>Settings of <see cref="AffinityPlacementSolver"/>.</summary>
public sealed class AffinityPlacementOptions
{
    public const double DEFAULT_TIME_LIMIT_SECONDS = 10;
    public const int DEFAULT_MAX_EXACT_VARIABLES = 50_000;
    public const int DEFAULT_LOCAL_SEARCH_RESTARTS = 200;

    /// <summary>Wall-clock limit of the whole solve, heuristic included. Default 10 s.</summary>
    public double TimeLimitSeconds { get; set; } = DEFAULT_TIME_LIMIT_SECONDS;

    /// <summary>CP-SAT worker threads; 0 (default) means one per core, at most 8. One worker is deterministic.</summary>
    public int Workers { get; set; }

    /// <summary>Seed of CP-SAT and of the local search. Default 1.</summary>
    public int Seed { get; set; } = 1;

    /// <summary>A plan to start from (warm start), for instance the one a running cluster uses; ignored when infeasible.</summary>
    public PlacementPlan? Hint { get; set; }

    /// <summary>
    /// Larger models (assignment plus transition variables) skip CP-SAT and use the local search alone. Default 50,000:
    /// about 32 layers of 64 experts with dense transitions on 4 silos.
    /// </summary>
    public int MaxExactVariables { get; set; } = DEFAULT_MAX_EXACT_VARIABLES;

    /// <summary>Perturb-and-descend rounds of the local search (within the time limit). Default 200.</summary>
    public int LocalSearchRestarts { get; set; } = DEFAULT_LOCAL_SEARCH_RESTARTS;
}

/// <summary>What <see cref="AffinityPlacementSolver"/> found.</summary>
/// <param name="Method"><c>cp-sat</c> when CP-SAT improved on the local search's plan, <c>local-search</c> when it did not or did not run.</param>
/// <param name="Optimal">CP-SAT proved that no balanced, in-budget plan crosses silos less.</param>
/// <param name="LowerBound">No feasible plan crosses less than this fraction (CP-SAT's bound; 0 when CP-SAT did not run).</param>
/// <param name="Variables">Size of the exact model; above <see cref="AffinityPlacementOptions.MaxExactVariables"/> CP-SAT does not run.</param>
/// <param name="Seconds">The whole solve, up to the time limit unless CP-SAT proved optimality sooner.</param>
/// <param name="BestFoundSeconds">When the returned plan (or one as good) was first found.</param>
/// <param name="HeuristicCrossFraction">The local search's own result, the warm start CP-SAT began from.</param>
public sealed record PlacementSolution(PlacementPlan Plan, double CrossFraction, string Method, bool Optimal, double LowerBound, double Seconds,
    double BestFoundSeconds, double HeuristicCrossFraction, int Variables);

/// <summary>
/// ExFlow's placement as a CP-SAT model: a Boolean <c>x[n,c]</c> per (layer, expert) node and silo, exactly one silo per
/// node, <c>floor(E/G) &lt;= sum_e x[(l,e),c] &lt;= ceil(E/G)</c> per layer and silo, optionally
/// <c>sum_n bytes[n] x[n,c] &lt;= budget[c]</c>; per traced pair (a, b) a Boolean <c>cross_ab &gt;= x[a,c] - x[b,c]</c> for every c,
/// and the objective minimises <c>sum w_ab cross_ab</c>, the expected cross-silo transitions. The local search's plan is the
/// hint; when silos are interchangeable their labels are fixed by first use in the first layer (value precedence), which
/// removes the G! symmetric copies; degree cuts (see the model) tighten its bound. Models above <see cref="AffinityPlacementOptions.MaxExactVariables"/> use the local
/// search alone. The result is the better of CP-SAT's and the local search's plans, so never worse than any feasible start.
/// </summary>
public static class AffinityPlacementSolver
{
    public static PlacementSolution Solve(PlacementProblem problem, AffinityPlacementOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(problem);
        options ??= new AffinityPlacementOptions();
        if (!(options.TimeLimitSeconds > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(options), "TimeLimitSeconds must be positive.");
        }
        var clock = Stopwatch.StartNew();
        var variables = problem.Nodes * problem.Silos + problem.Edges.Count;
        var exact = variables <= options.MaxExactVariables;
        // The heuristic gets a small share of the time when CP-SAT follows it, all of it otherwise.
        var searchTime = TimeSpan.FromSeconds(exact ? Math.Min(1, options.TimeLimitSeconds / 5) : options.TimeLimitSeconds);
        var heuristic = AffinityLocalSearch.Solve(problem, [options.Hint, problem.RoundRobin()], searchTime, options.LocalSearchRestarts, options.Seed, cancellationToken);
        var heuristicCross = heuristic is null ? double.NaN : problem.CrossFraction(heuristic);
        var heuristicSeconds = clock.Elapsed.TotalSeconds;
        if (!exact)
        {
            return heuristic is null
                ? throw new PlacementInfeasibleException($"No balanced plan within the memory budgets was found for {problem.Nodes} experts on {problem.Silos} silos.")
                : new PlacementSolution(heuristic, heuristicCross, "local-search", false, 0, clock.Elapsed.TotalSeconds, heuristicSeconds, heuristicCross, variables);
        }

        var left = Math.Max(0.05, options.TimeLimitSeconds - clock.Elapsed.TotalSeconds);
        var (plan, status, bound, foundAt) = SolveExact(problem, heuristic, left, options, clock, cancellationToken);
        if (status == CpSolverStatus.Infeasible)
        {
            throw new PlacementInfeasibleException(Infeasible(problem));
        }
        if (status == CpSolverStatus.ModelInvalid)
        {
            throw new InvalidOperationException("CP-SAT rejected the placement model as invalid.");
        }
        var optimal = status == CpSolverStatus.Optimal;
        var exactCross = plan is null ? double.PositiveInfinity : problem.CrossFraction(plan);
        if (plan is null && heuristic is null)
        {
            throw new PlacementInfeasibleException($"Neither CP-SAT ({status}) nor the local search found a feasible plan within {options.TimeLimitSeconds} s.");
        }
        // CP-SAT starts from the heuristic's plan: unless it found a better one, the heuristic's plan is kept (its proof
        // of optimality and its bound still hold for it, the costs being equal).
        var improved = plan is not null && (heuristic is null || exactCross < heuristicCross - 1e-12);
        return new PlacementSolution(improved ? plan! : heuristic!, improved ? exactCross : heuristicCross, improved ? "cp-sat" : "local-search",
            optimal, Math.Max(0, bound), clock.Elapsed.TotalSeconds, improved ? foundAt : heuristicSeconds, heuristicCross, variables);
    }

    private static (PlacementPlan? Plan, CpSolverStatus Status, double Bound, double FoundAt) SolveExact(PlacementProblem p, PlacementPlan? hint,
        double seconds, AffinityPlacementOptions options, Stopwatch clock, CancellationToken cancellationToken)
    {
        var (experts, silos) = (p.Experts, p.Silos);
        var model = new CpModel();
        var x = new BoolVar[p.Nodes, silos];
        for (var n = 0; n < p.Nodes; n++)
        {
            for (var c = 0; c < silos; c++) x[n, c] = model.NewBoolVar($"x_{n}_{c}");
            model.AddExactlyOne(Enumerable.Range(0, silos).Select(c => x[n, c]));
        }
        for (var i = 0; i < p.Layers.Count; i++)
        {
            for (var c = 0; c < silos; c++)
            {
                var onSilo = LinearExpr.Sum(Enumerable.Range(0, experts).Select(e => x[i * experts + e, c]));
                model.AddLinearConstraint(onSilo, p.MinPerSilo, p.MaxPerSilo);
            }
        }
        if (p.HasBudgets)
        {
            for (var c = 0; c < silos; c++)
            {
                var cc = c;
                model.Add(LinearExpr.WeightedSum(Enumerable.Range(0, p.Nodes).Select(n => x[n, cc]), p.ExpertBytes!) <= p.SiloBudgetBytes![c]);
            }
        }
        if (p.SilosInterchangeable)
        {
            // Value precedence on the first layer: silo c may hold expert e only if silo c-1 holds an earlier expert.
            for (var e = 0; e < experts; e++)
            {
                for (var c = 1; c < silos; c++)
                {
                    var earlier = LinearExpr.Sum(Enumerable.Range(0, e).Select(f => x[f, c - 1]));
                    model.Add(x[e, c] <= earlier);
                }
            }
        }

        var weights = IntegerWeights(p.Edges);
        var cross = new BoolVar[p.Edges.Count];
        for (var k = 0; k < p.Edges.Count; k++)
        {
            var (a, b) = (p.Edges[k].A, p.Edges[k].B);
            cross[k] = model.NewBoolVar($"cross_{a}_{b}");
            for (var c = 0; c < silos; c++)
            {
                model.Add(cross[k] >= x[a, c] - x[b, c]);
            }
        }
        // Degree cuts: at most ceil(E/G) experts of another layer share a node's silo, so at least the node's transitions
        // to that layer minus its ceil(E/G) heaviest ones cross. Valid for every plan, and they lift CP-SAT's weak
        // linear bound close to the optimum on traces with mild affinity.
        foreach (var group in Enumerable.Range(0, p.Edges.Count)
                     .SelectMany(k => new[] { (Node: p.Edges[k].A, Other: p.Edges[k].B / experts, Edge: k), (Node: p.Edges[k].B, Other: p.Edges[k].A / experts, Edge: k) })
                     .GroupBy(t => (t.Node, t.Other)))
        {
            var edges = group.Select(t => t.Edge).ToArray();
            if (edges.Length <= p.MaxPerSilo) continue;
            var atLeast = edges.Sum(k => weights[k]) - edges.Select(k => weights[k]).OrderDescending().Take(p.MaxPerSilo).Sum();
            model.Add(LinearExpr.WeightedSum(edges.Select(k => cross[k]), edges.Select(k => weights[k])) >= atLeast);
        }
        model.Minimize(LinearExpr.WeightedSum(cross, weights));

        if (hint is not null)
        {
            var h = p.SilosInterchangeable ? Canonical(hint.Assignment, experts, silos) : hint.Assignment;
            for (var n = 0; n < p.Nodes; n++)
            {
                for (var c = 0; c < silos; c++) model.AddHint(x[n, c], h[n] == c);
            }
            for (var k = 0; k < p.Edges.Count; k++) model.AddHint(cross[k], h[p.Edges[k].A] != h[p.Edges[k].B]);
        }

        var solver = new CpSolver
        {
            StringParameters = string.Create(CultureInfo.InvariantCulture,
                $"max_time_in_seconds:{seconds:R},num_workers:{(options.Workers > 0 ? options.Workers : Math.Clamp(Environment.ProcessorCount, 1, 8))},random_seed:{options.Seed}"),
        };
        using var stop = cancellationToken.Register(solver.StopSearch);
        var progress = new Progress(clock);
        var status = solver.Solve(model, progress);
        if (status is not (CpSolverStatus.Optimal or CpSolverStatus.Feasible))
        {
            return (null, status, 0, 0);
        }
        var assignment = new int[p.Nodes];
        for (var n = 0; n < p.Nodes; n++)
        {
            for (var c = 0; c < silos; c++)
            {
                if (solver.BooleanValue(x[n, c])) assignment[n] = c;
            }
        }
        var total = weights.Sum();
        return (new PlacementPlan(p.Layers, experts, silos, assignment), status, total > 0 ? solver.BestObjectiveBound / total : 0, progress.BestAt);
    }

    /// <summary>Notes when CP-SAT last improved its plan.</summary>
    private sealed class Progress(Stopwatch clock) : CpSolverSolutionCallback
    {
        private double _best = double.PositiveInfinity;

        public double BestAt { get; private set; }

        public override void OnSolutionCallback()
        {
            var objective = ObjectiveValue();
            if (objective < _best)
            {
                (_best, BestAt) = (objective, clock.Elapsed.TotalSeconds);
            }
        }
    }

    /// <summary>Transition weights as CP-SAT integers: exact when they are whole numbers of moderate size, else scaled to 10^6.</summary>
    private static long[] IntegerWeights(IReadOnlyList<PlacementEdge> edges)
    {
        if (edges.Count == 0) return [];
        var whole = edges.All(e => e.Weight == Math.Floor(e.Weight)) && edges.Sum(e => e.Weight) < 1e15;
        if (whole) return [.. edges.Select(e => (long)e.Weight)];
        var scale = 1e6 / edges.Max(e => e.Weight);
        return [.. edges.Select(e => Math.Max(1L, (long)Math.Round(e.Weight * scale)))];
    }

    /// <summary>Relabels silos by first use among the first layer's experts (the form the symmetry-breaking constraints accept).</summary>
    internal static int[] Canonical(int[] assignment, int experts, int silos)
    {
        var map = Enumerable.Repeat(-1, silos).ToArray();
        var next = 0;
        for (var e = 0; e < Math.Min(experts, assignment.Length); e++)
        {
            if (map[assignment[e]] < 0) map[assignment[e]] = next++;
        }
        for (var c = 0; c < silos; c++)
        {
            if (map[c] < 0) map[c] = next++;
        }
        return [.. assignment.Select(s => map[s])];
    }

    private static string Infeasible(PlacementProblem p)
    {
        var need = p.ExpertBytes?.Sum() ?? 0;
        var have = p.SiloBudgetBytes?.Sum() ?? 0;
        return p.HasBudgets
            ? $"No balanced placement of {p.Experts} experts per layer on {p.Silos} silos fits the memory budgets ({need} bytes of experts, {have} bytes of budget in all)."
            : $"No balanced placement of {p.Experts} experts per layer on {p.Silos} silos exists.";
    }
}

/// <summary>No plan meets the balance and memory constraints.</summary>
public sealed class PlacementInfeasibleException : InvalidOperationException
{
    public PlacementInfeasibleException() { }

    public PlacementInfeasibleException(string message) : base(message) { }

    public PlacementInfeasibleException(string message, Exception inner) : base(message, inner) { }
}
