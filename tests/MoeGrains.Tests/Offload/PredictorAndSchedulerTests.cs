using MoeGrains.Offload;
using MoeGrains.Placement;
using MoeGrains.Tests.Placement;

namespace MoeGrains.Tests.Offload;

public sealed class PredictorAndSchedulerTests
{
    [Fact]
    public void The_predictor_learns_which_experts_follow_and_which_a_token_uses()
    {
        // Expert e at layer 0 is always followed by expert (e + 1) % 4 at layer 1; token 5 always starts at expert 2.
        var paths = Enumerable.Range(0, 200).Select(i => new RoutePath(i % 2 == 0 ? 5 : -1,
            [[i % 2 == 0 ? 2 : i % 4], [((i % 2 == 0 ? 2 : i % 4) + 1) % 4]]));
        var predictor = RoutingPathPredictor.Train(paths, 2, 4, 1);
        var next = predictor.Next(0, [1]);
        Assert.Equal(2, Array.IndexOf(next, next.Max()));
        Assert.True(next[2] > 0.9);
        var token = predictor.ForToken(5, 0);
        Assert.Equal(2, Array.IndexOf(token, token.Max()));
        Assert.Equal(predictor.Marginal(0), predictor.ForToken(77, 0)); // unseen token: the marginal
        Assert.Throws<ArgumentOutOfRangeException>(() => predictor.Next(1, [0]));
        Assert.Throws<ArgumentException>(() => predictor.Observe(new RoutePath(1, [[0]])));
    }

    [Fact]
    public void A_predictor_from_the_Mixtral_counts_prefers_the_counted_successors()
    {
        var trace = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, new RoutingTraceFilter(Selection: "top2"));
        var predictor = RoutingPathPredictor.FromTrace(trace, 2);
        Assert.Equal(3, predictor.Layers);
        Assert.Equal(8, predictor.Experts);
        var first = trace.Transitions[0];
        for (var a = 0; a < 8; a++)
        {
            var best = Enumerable.Range(0, 8).MaxBy(b => first.Counts[a * 8 + b]);
            var p = predictor.Next(0, [a]);
            Assert.Equal(best, Array.IndexOf(p, p.Max()));
            Assert.InRange(p.Sum(), 1.99, 2.01); // k = 2 experts per token
        }
    }

    [Fact]
    public void The_scheduler_places_every_token_once_and_groups_similar_paths()
    {
        // Two kinds of tokens, interleaved: kind A uses experts 0-1, kind B experts 2-3.
        var paths = Enumerable.Range(0, 12).Select(i => i % 2 == 0 ? new double[] { 1, 1, 0, 0 } : [0, 0, 1, 1]).ToList();
        var scheduled = TokenScheduler.Group(paths, 3);
        Assert.Equal(Enumerable.Range(0, 12), scheduled.SelectMany(b => b).Order());
        Assert.All(scheduled, b => Assert.True(b.Length <= 3));
        Assert.All(scheduled, b => Assert.Single(b.Select(t => t % 2).Distinct()));
        var actual = paths.Select(p => new[] { Enumerable.Range(0, 4).Where(e => p[e] > 0).ToArray() }).ToList();
        var inOrder = TokenScheduler.InOrder(12, 3);
        Assert.Equal(2.0, TokenScheduler.DistinctExpertsPerBatchLayer(scheduled, actual));
        Assert.Equal(4.0, TokenScheduler.DistinctExpertsPerBatchLayer(inOrder, actual));
        Assert.Equal(0, scheduled[0][0]); // the oldest token opens the first batch
        Assert.Empty(TokenScheduler.Group([], 4));
    }
}
