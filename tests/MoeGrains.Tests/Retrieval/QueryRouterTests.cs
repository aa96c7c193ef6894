using MoeGrains.Retrieval;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

public sealed class QueryRouterTests
{
    private static float[] Unit(params float[] v)
    {
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return [.. v.Select(x => x / norm)];
    }

    /// <summary>Domain a (along x): expert 0 wins on average, but one noisy query favours expert 1. Domain b (along y): expert 1.</summary>
    private static List<PilotQuery> Training() =>
    [
        new("a", Unit(1, 0.1f), [0.9, 0.2]),
        new("a", Unit(1, -0.1f), [0.8, 0.1]),
        new("a", Unit(1, 0.3f), [0.2, 0.3]),
        new("b", Unit(0.1f, 1), [0.1, 0.8]),
        new("b", Unit(-0.1f, 1), [0.3, 0.6]),
    ];

    [Fact]
    public void Names_parse_with_or_without_the_prefix_and_the_default_is_the_evaluations_best()
    {
        Assert.Equal(["nearest-pilot", "mean-similarity", "domain-pilots", "weighted-fusion"], QueryRouter.Names);
        Assert.True(QueryRouter.TryParse("router-domain-pilots", out var kind));
        Assert.Equal(RouterKind.DomainPilots, kind);
        Assert.True(QueryRouter.TryParse("Mean-Similarity", out kind));
        Assert.Equal(RouterKind.MeanSimilarity, kind);
        Assert.False(QueryRouter.TryParse("best", out _));
        Assert.Equal(RouterKind.WeightedFusion, QueryRouter.DEFAULT);
        Assert.Equal("weighted-fusion", new MoeGrains.Retrieval.Serving.RetrievalOptions().Router);
    }

    [Fact]
    public void Domain_pilots_label_each_domain_with_its_best_expert_on_average()
    {
        // A query close to the noisy training query of domain a: the per-query nearest pilot follows the noise
        // (expert 1's pilot in domain a), the domain pilot gives the domain's best expert (0).
        using var q = tensor(Unit(1, 0.3f), [1, 2]);
        Assert.Equal(1, QueryRouter.Fit(RouterKind.NearestPilot, ["x", "y"], Training()).Route(q)[0].Expert);
        var domain = QueryRouter.Fit(RouterKind.DomainPilots, ["x", "y"], Training()).Route(q)[0];
        Assert.Equal(0, domain.Expert);
        Assert.Equal([1f, 0f], domain.Weights);
        using var b = tensor(Unit(0, 1), [1, 2]);
        Assert.Equal(1, QueryRouter.Fit(RouterKind.DomainPilots, ["x", "y"], Training()).Route(b)[0].Expert);
    }

    [Fact]
    public void Weighted_fusion_weights_are_the_softmax_of_mean_pilot_similarities()
    {
        using var q = tensor(Unit(1, 0.2f).Concat(Unit(0.2f, 1)).ToArray(), [2, 2]);
        var fusion = QueryRouter.Fit(RouterKind.WeightedFusion, ["x", "y"], Training());
        var mean = QueryRouter.Fit(RouterKind.MeanSimilarity, ["x", "y"], Training());
        Assert.False(fusion.Chooses);
        var f = fusion.Route(q);
        var m = mean.Route(q);
        for (var i = 0; i < 2; i++)
        {
            Assert.Equal(m[i].Scores, f[i].Scores);
            Assert.Equal(1.0, f[i].Weights.Sum(), 5);
            Assert.Equal(QueryRouter.Softmax(m[i].Scores, QueryRouter.WEIGHT_TEMPERATURE), f[i].Weights);
            Assert.Equal(m[i].Expert, f[i].Expert); // the heaviest weight is the mean-similarity router's choice
        }
        Assert.True(f[0].Weights[0] > f[0].Weights[1] && f[1].Weights[1] > f[1].Weights[0]);
    }

    [Fact]
    public void Fusion_sums_min_max_normalised_scores_times_weights()
    {
        // List 0: a 10, b 6, c 2 -> a 1, b 0.5, c 0. List 1: c 3, d 1 -> c 1, d 0.
        var lists = new List<(string[], float[])> { (["a", "b", "c"], [10f, 6f, 2f]), (["c", "d"], [3f, 1f]) };
        var (uniform, uniformScores) = QueryRouter.Fuse(lists, null, 10, StringComparer.Ordinal);
        Assert.Equal(["a", "c", "b", "d"], uniform); // a 1, c 0 + 1, b 0.5, d 0; ties by key
        Assert.Equal([1f, 1f, 0.5f, 0f], uniformScores);
        var (weighted, weightedScores) = QueryRouter.Fuse(lists, [0.25f, 0.75f], 2, StringComparer.Ordinal);
        Assert.Equal(["c", "a"], weighted); // c 0.75, a 0.25, b 0.125, d 0
        Assert.Equal([0.75f, 0.25f], weightedScores);
    }
}
