using MoeGrains.Retrieval;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

public sealed class PilotEmbeddingRouterTests
{
    private static float[] Unit(params float[] v)
    {
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return [.. v.Select(x => x / norm)];
    }

    [Theory]
    [InlineData(PilotMatch.NearestPilot)]
    [InlineData(PilotMatch.MeanSimilarity)]
    public void Queries_go_to_the_expert_that_served_similar_training_queries_best(PilotMatch match)
    {
        var router = new PilotEmbeddingRouter(["lexical", "dense"], match);
        // Domain A's queries point along x and are served best by expert 0; domain B's along y, by expert 1.
        router.AddTrainingQuery("a", Unit(1, 0.1f), [0.9, 0.2]);
        router.AddTrainingQuery("a", Unit(1, -0.1f), [0.7, 0.1]);
        router.AddTrainingQuery("b", Unit(0.1f, 1), [0.1, 0.8]);
        router.AddTrainingQuery("b", Unit(-0.1f, 1), [0.3, 0.6]);
        router.AddTrainingQuery("b", Unit(1, 1), [0, 0]); // nobody answers it: it teaches nothing
        router.Fit();
        Assert.Equal([1, 1], router.PilotsPerExpert);
        using var test = tensor(Unit(1, 0.2f).Concat(Unit(0.2f, 1)).ToArray(), [2, 2]);
        Assert.Equal([0, 1], router.Route(test));
    }

    [Fact]
    public void Ties_go_to_the_first_expert_and_an_unfitted_router_is_refused()
    {
        var router = new PilotEmbeddingRouter(["first", "second"]);
        using var q = tensor(new float[] { 1, 0 }, [1, 2]);
        Assert.Throws<InvalidOperationException>(() => router.Route(q));
        Assert.Throws<InvalidOperationException>(router.Fit);
        router.AddTrainingQuery("a", [1, 0], [0.5, 0.5]);
        router.Fit();
        Assert.Equal([1, 0], router.PilotsPerExpert);
        Assert.Throws<ArgumentException>(() => router.AddTrainingQuery("a", [1, 0], [0.5]));
    }
}
