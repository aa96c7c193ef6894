using MoeGrains.Placement;

namespace MoeGrains.Tests.Placement;

public sealed class CoherentDispatchTraceTests
{
    [Fact]
    public void The_trace_weights_top1_moves_once_and_other_experts_twice()
    {
        var routes = new[]
        {
            new TokenRoute(1, [new LayerRoute(0, [2, 0], [0.6f, 0.4f]), new LayerRoute(1, [1, 3], [0.7f, 0.3f])]),
            new TokenRoute(2, [new LayerRoute(0, [2, 1], [0.9f, 0.1f]), new LayerRoute(1, [1, 0], [0.5f, 0.5f])]),
        };
        var trace = CoherentDispatchTrace.FromTokenRoutes(routes, 4);
        var t = trace.Transitions.ToDictionary(x => (x.LayerFrom, x.LayerTo));
        Assert.Equal(2, t[(0, 1)].Counts[2 * 4 + 1]); // top-1 2 -> top-1 1, twice
        Assert.Equal(2, t[(0, 1)].Total);
        Assert.Equal(2, t[(0, 0)].Counts[2 * 4 + 0]);
        Assert.Equal(2, t[(0, 0)].Counts[2 * 4 + 1]);
        Assert.Equal(4, t[(1, 1)].Total);

        // Layer 0: experts 1, 2 on silo 0; layer 1: experts 1, 3 on silo 0. Crossing: layer 0's 2 -> 0 and layer 1's 1 -> 0
        // (weight 2 each) of 10 in all: the problem's cross fraction counts the coherent dispatch's messages.
        var problem = new PlacementProblem(trace, 2);
        var plan = new PlacementPlan([0, 1], 4, 2, [1, 0, 0, 1, 1, 0, 1, 0]);
        Assert.Null(problem.Violation(plan));
        Assert.Equal(4 / 10.0, problem.CrossFraction(plan), 9);
    }

    [Fact]
    public void The_solver_finds_the_brute_force_optimum_of_a_trace_with_edges_inside_layers()
    {
        var random = new Random(5);
        var routes = Enumerable.Range(0, 60).Select(t =>
        {
            int[] Pick() { var a = random.Next(4); var b = (a + 1 + random.Next(3)) % 4; return [a, b]; }
            return new TokenRoute(t, [new LayerRoute(0, Pick(), [0.6f, 0.4f]), new LayerRoute(1, Pick(), [0.6f, 0.4f])]);
        }).ToArray();
        var problem = new PlacementProblem(CoherentDispatchTrace.FromTokenRoutes(routes, 4), 2);
        var layerPlans = Enumerable.Range(0, 16).Select(m => Enumerable.Range(0, 4).Select(e => (m >> e) & 1).ToArray()).Where(a => a.Sum() == 2).ToArray();
        var best = layerPlans.SelectMany(a => layerPlans.Select(b => problem.CrossFraction(new PlacementPlan([0, 1], 4, 2, [.. a, .. b])))).Min();
        foreach (var exact in new[] { 50_000, 0 }) // CP-SAT, and the local search alone
        {
            var solution = AffinityPlacementSolver.Solve(problem, new AffinityPlacementOptions { TimeLimitSeconds = 5, MaxExactVariables = exact });
            Assert.Null(problem.Violation(solution.Plan));
            Assert.Equal(best, solution.CrossFraction, 9);
        }
    }
}
