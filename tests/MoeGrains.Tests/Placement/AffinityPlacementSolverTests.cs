using CsCheck;
using MoeGrains.Placement;

namespace MoeGrains.Tests.Placement;

public sealed class AffinityPlacementSolverTests
{
    private static readonly AffinityPlacementOptions Quick = new() { TimeLimitSeconds = 0.5, Workers = 1 };

    // Tiny instances: CP-SAT proves them in milliseconds on an idle machine; the generous limit only matters when the
    // machine is overloaded (a proof cut short by the clock would read as a wrong answer).
    private static readonly AffinityPlacementOptions Exact = new() { TimeLimitSeconds = 30, Workers = 1 };

    [Theory]
    [InlineData(2, 0.415)]
    [InlineData(4, 0.70)]
    public void On_the_mixtral_trace_the_solver_is_balanced_optimal_and_beats_round_robin_and_random(int silos, double atMost)
    {
        var trace = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, new RoutingTraceFilter(Selection: "top1"));
        var problem = new PlacementProblem(trace, silos);
        var solution = AffinityPlacementSolver.Solve(problem, Quick);

        Assert.Null(problem.Violation(solution.Plan));
        Assert.Equal(problem.CrossFraction(solution.Plan), solution.CrossFraction, 12);
        Assert.True(solution.CrossFraction <= problem.CrossFraction(problem.RoundRobin()), "worse than round-robin");
        Assert.True(solution.CrossFraction < problem.ExpectedRandomCrossFraction(), "no better than random");
        Assert.True(solution.CrossFraction <= atMost, $"{solution.CrossFraction} > {atMost}");
        Assert.Equal(1 - 1.0 / silos, problem.ExpectedRandomCrossFraction(), 12);
        Assert.InRange(solution.LowerBound, 0, solution.CrossFraction + 1e-9);

        // The exhaustive optimum of this chain-shaped trace: the solver reaches it.
        var optimum = ChainPlacementOptimum.TrySolve(problem);
        Assert.NotNull(optimum);
        Assert.Null(problem.Violation(optimum));
        Assert.Equal(problem.CrossFraction(optimum), solution.CrossFraction, 9);
    }

    [Fact]
    public void The_solver_matches_brute_force_on_small_instances()
    {
        Instances(maxLayers: 3, maxExperts: 5).Sample(problem =>
        {
            var best = BruteForce(problem).Min(a => Cross(problem, a));
            var solution = AffinityPlacementSolver.Solve(problem, new AffinityPlacementOptions { TimeLimitSeconds = 5, Workers = 1, LocalSearchRestarts = 0 });
            Assert.Null(problem.Violation(solution.Plan));
            Assert.Equal(best, solution.CrossFraction, 9);
            Assert.True(solution.CrossFraction <= problem.CrossFraction(problem.RoundRobin()) + 1e-12);
            if (ChainPlacementOptimum.TrySolve(problem) is { } exact)
            {
                Assert.Equal(best, problem.CrossFraction(exact), 9);
            }
        }, iter: 10, threads: 1);
    }

    [Fact]
    public void Balance_and_memory_budgets_always_hold_or_the_solver_says_no_plan_exists()
    {
        var gen = Gen.Select(Instances(maxLayers: 3, maxExperts: 4), Gen.Int[1, 4].Array[12], Gen.Int[0, 12]);
        gen.Sample((raw, sizes, slack) =>
        {
            var bytes = sizes.Take(raw.Nodes).Select(s => (long)s).ToArray();
            // Budgets around an even share: sometimes roomy, sometimes impossible.
            var share = bytes.Sum() / raw.Silos;
            var budgets = Enumerable.Range(0, raw.Silos).Select(c => share + slack / 3 - c).ToArray();
            var problem = new PlacementProblem(raw.Trace, raw.Silos, bytes, budgets);
            var feasible = BruteForce(problem).Select(a => new PlacementPlan(problem.Layers, problem.Experts, problem.Silos, a))
                .Where(p => problem.Violation(p) is null).ToList();
            if (feasible.Count == 0)
            {
                Assert.Throws<PlacementInfeasibleException>(() => AffinityPlacementSolver.Solve(problem, Exact));
                return;
            }
            var solution = AffinityPlacementSolver.Solve(problem, Exact);
            Assert.Null(problem.Violation(solution.Plan));
            var used = problem.SiloBytes(solution.Plan);
            Assert.All(Enumerable.Range(0, problem.Silos), c => Assert.True(used[c] <= budgets[c]));
            Assert.Equal(feasible.Min(problem.CrossFraction), solution.CrossFraction, 9);
        }, iter: 10, threads: 1);
    }

    [Fact]
    public void Large_instances_fall_back_to_the_local_search_which_keeps_the_constraints_and_beats_round_robin()
    {
        var random = new Random(3);
        const int experts = 32;
        var transitions = Enumerable.Range(0, 7).Select(l =>
        {
            // Each expert sends most of its tokens to a partner expert at the next layer: strong, adjacent-layer affinity.
            var counts = new double[experts * experts];
            var partner = Enumerable.Range(0, experts).OrderBy(_ => random.Next()).ToArray();
            for (var i = 0; i < experts; i++)
            {
                for (var p = 0; p < experts; p++) counts[i * experts + p] = random.Next(0, 5) + (p == partner[i] ? 200 : 0);
            }
            return new LayerTransition(l, l + 1, counts);
        });
        var problem = new PlacementProblem(new RoutingTrace(experts, transitions), 4);
        var solution = AffinityPlacementSolver.Solve(problem, new AffinityPlacementOptions { TimeLimitSeconds = 2, MaxExactVariables = 100, Seed = 7 });
        Assert.Equal("local-search", solution.Method);
        Assert.Null(problem.Violation(solution.Plan));
        Assert.True(solution.CrossFraction < 0.5 * problem.CrossFraction(problem.RoundRobin()), $"{solution.CrossFraction}");
    }

    [Fact]
    public void A_warm_start_is_never_lost()
    {
        var trace = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, new RoutingTraceFilter(Selection: "top1", Domain: "github"));
        var problem = new PlacementProblem(trace, 4);
        var optimum = ChainPlacementOptimum.TrySolve(problem)!;
        var solution = AffinityPlacementSolver.Solve(problem, new AffinityPlacementOptions { TimeLimitSeconds = 0.2, Workers = 1, LocalSearchRestarts = 0, Hint = optimum });
        Assert.Equal(problem.CrossFraction(optimum), solution.CrossFraction, 12);
    }

    [Fact]
    public void The_exact_random_expectation_matches_sampled_random_plans()
    {
        var trace = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, new RoutingTraceFilter(Selection: "top2"));
        foreach (var silos in new[] { 2, 3, 4 })
        {
            var problem = new PlacementProblem(trace, silos);
            var random = new Random(silos);
            var sampled = Enumerable.Range(0, 2000).Average(_ => problem.CrossFraction(problem.Random(random)));
            Assert.Equal(problem.ExpectedRandomCrossFraction(), sampled, 0.01);
            Assert.Null(problem.Violation(problem.Random(random)));
            Assert.Null(problem.Violation(problem.RoundRobin()));
        }
    }

    /// <summary>Random traces: 2..maxLayers layers of 2..maxExperts experts, adjacent or skipping transitions, on 2 or 3 silos.</summary>
    private static Gen<PlacementProblem> Instances(int maxLayers, int maxExperts) =>
        Gen.Select(Gen.Int[2, maxLayers], Gen.Int[2, maxExperts], Gen.Int[2, 3], Gen.Bool, Gen.Int[0, 20].Array[maxLayers * maxExperts * maxExperts])
            .Select((layers, experts, silos, skip, pool) =>
            {
                var transitions = new List<LayerTransition>();
                var k = 0;
                for (var l = 0; l + 1 < layers; l++)
                {
                    var counts = new double[experts * experts];
                    for (var i = 0; i < counts.Length; i++) counts[i] = pool[k++ % pool.Length];
                    transitions.Add(new LayerTransition(l, l + 1, counts));
                }
                if (skip && layers > 2)
                {
                    // A non-adjacent pair too, so not every instance is a chain.
                    transitions.Add(new LayerTransition(0, layers - 1, [.. Enumerable.Range(0, experts * experts).Select(i => (double)pool[(i * 7) % pool.Length])]));
                }
                // Brute force stays small: at most 90 balanced plans per layer (5 experts on 3 silos is left out).
                return new PlacementProblem(new RoutingTrace(experts, transitions), experts == 5 ? 2 : Math.Min(silos, experts));
            });

    private static double Cross(PlacementProblem problem, int[] assignment)
    {
        var cross = 0.0;
        foreach (var e in problem.Edges)
        {
            if (assignment[e.A] != assignment[e.B]) cross += e.Weight;
        }
        return problem.TotalWeight == 0 ? 0 : cross / problem.TotalWeight;
    }

    /// <summary>Every balanced plan.</summary>
    private static IEnumerable<int[]> BruteForce(PlacementProblem problem)
    {
        var layerPlans = new List<int[]>();
        var a = new int[problem.Experts];
        var count = new int[problem.Silos];
        Fill(0);
        var index = new int[problem.Layers.Count];
        while (true)
        {
            var assignment = new int[problem.Nodes];
            for (var i = 0; i < index.Length; i++) layerPlans[index[i]].CopyTo(assignment, i * problem.Experts);
            yield return assignment;
            var d = 0;
            while (d < index.Length && ++index[d] == layerPlans.Count) index[d++] = 0;
            if (d == index.Length) yield break;
        }

        void Fill(int e)
        {
            if (e == problem.Experts)
            {
                if (count.All(c => c >= problem.MinPerSilo)) layerPlans.Add((int[])a.Clone());
                return;
            }
            for (var c = 0; c < problem.Silos; c++)
            {
                if (count[c] == problem.MaxPerSilo) continue;
                (a[e], count[c]) = (c, count[c] + 1);
                Fill(e + 1);
                count[c]--;
            }
        }
    }
}
