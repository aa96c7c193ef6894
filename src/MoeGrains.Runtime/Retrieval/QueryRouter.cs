using static TorchSharp.torch;

namespace MoeGrains.Retrieval;

/// <summary>The routers over retriever experts, by name: what <c>moe eval retrieval</c> measures and what a silo serves.</summary>
public enum RouterKind
{
    /// <summary>RouterRetriever's code: per-query pilots, the expert of the single nearest pilot.</summary>
    NearestPilot,

    /// <summary>RouterRetriever's paper: per-query pilots, the expert of the highest mean pilot similarity.</summary>
    MeanSimilarity,

    /// <summary>One pilot per domain (the centroid of its training queries) labelled with the domain's best expert on average; the nearest pilot's expert.</summary>
    DomainPilots,

    /// <summary>Every expert searches; their min-max normalised scores are summed with the softmax (τ 0.05) of the mean pilot similarities as weights.</summary>
    WeightedFusion,
}

/// <summary>A training query of a router: its domain, its router-encoder embedding and each expert's nDCG@10 on it.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.PilotQuery")]
public sealed record PilotQuery([property: Id(0)] string Domain, [property: Id(1)] float[] Embedding, [property: Id(2)] double[] ExpertNdcg);

/// <summary>Where a router sends one query: the chosen expert, each expert's weight (one-hot for a router that chooses) and the router's score per expert.</summary>
public sealed record RouteDecision(int Expert, float[] Weights, float[] Scores);

/// <summary>
/// One router of <see cref="RouterKind"/>, fitted on training queries (<see cref="PilotQuery"/>): the same code in the
/// cross-validated evaluation and on the silo, so that what is served is what was measured.
/// </summary>
public sealed class QueryRouter
{
    /// <summary>Softmax temperature of <see cref="RouterKind.WeightedFusion"/>'s weights (fixed before any run, not tuned).</summary>
    public const double WEIGHT_TEMPERATURE = 0.05;

    /// <summary>The router served when none is named: the best router of the README's evaluation.</summary>
    public const RouterKind DEFAULT = RouterKind.WeightedFusion;

    private readonly PilotEmbeddingRouter _router;

    private QueryRouter(RouterKind kind, IReadOnlyList<string> experts, PilotEmbeddingRouter router)
    {
        Kind = kind;
        Experts = experts;
        _router = router;
    }

    public RouterKind Kind { get; }

    public IReadOnlyList<string> Experts { get; }

    /// <summary>Whether a query is answered by one expert (false: by a weighted mixture of all of them).</summary>
    public bool Chooses => Kind != RouterKind.WeightedFusion;

    /// <summary>The kebab-case name (<c>domain-pilots</c>); the evaluation's system is <c>router-</c> + this.</summary>
    public static string Name(RouterKind kind) => kind switch
    {
        RouterKind.NearestPilot => "nearest-pilot",
        RouterKind.MeanSimilarity => "mean-similarity",
        RouterKind.DomainPilots => "domain-pilots",
        RouterKind.WeightedFusion => "weighted-fusion",
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    public static IReadOnlyList<string> Names => [.. Enum.GetValues<RouterKind>().Select(Name)];

    /// <summary>Parses a router name (case-insensitive, with or without the <c>router-</c> prefix); false for an unknown name.</summary>
    public static bool TryParse(string? name, out RouterKind kind)
    {
        var bare = (name ?? "").Trim().ToLowerInvariant();
        bare = bare.StartsWith("router-", StringComparison.Ordinal) ? bare["router-".Length..] : bare;
        foreach (var k in Enum.GetValues<RouterKind>())
        {
            if (Name(k) == bare)
            {
                kind = k;
                return true;
            }
        }
        kind = DEFAULT;
        return false;
    }

    /// <summary>Fits a router of <paramref name="kind"/> over <paramref name="experts"/> on <paramref name="training"/>.</summary>
    /// <exception cref="InvalidOperationException">No training query was answered by any expert.</exception>
    public static QueryRouter Fit(RouterKind kind, IReadOnlyList<string> experts, IEnumerable<PilotQuery> training)
    {
        ArgumentNullException.ThrowIfNull(experts);
        ArgumentNullException.ThrowIfNull(training);
        var queries = training.ToList();
        var match = kind is RouterKind.NearestPilot or RouterKind.DomainPilots ? PilotMatch.NearestPilot : PilotMatch.MeanSimilarity;
        var router = new PilotEmbeddingRouter(experts, match);
        if (kind == RouterKind.DomainPilots)
        {
            // A label per domain, not per query: the expert of the best mean nDCG@10 on the domain's training queries.
            foreach (var domain in queries.GroupBy(q => q.Domain, StringComparer.Ordinal))
            {
                var best = Enumerable.Range(0, experts.Count).MaxBy(e => domain.Average(q => q.ExpertNdcg[e]));
                var label = new double[experts.Count];
                label[best] = 1;
                foreach (var q in domain)
                {
                    router.AddTrainingQuery(q.Domain, q.Embedding, label);
                }
            }
        }
        else
        {
            foreach (var q in queries)
            {
                router.AddTrainingQuery(q.Domain, q.Embedding, q.ExpertNdcg);
            }
        }
        router.Fit();
        return new QueryRouter(kind, experts, router);
    }

    /// <summary>Routes query embeddings <c>[queries, dim]</c> of the router encoder.</summary>
    public RouteDecision[] Route(Tensor embeddings)
    {
        ArgumentNullException.ThrowIfNull(embeddings);
        // One similarity pass: the per-expert scores (mean, or nearest pilot's) give both the choice and the weights.
        float[][] scores = _router.Match == PilotMatch.MeanSimilarity ? _router.ExpertSimilarities(embeddings) : _router.ExpertMaxSimilarities(embeddings);
        return [.. scores.Select(s =>
        {
            var e = Generation.TokenSampler.ArgMax(s); // the first best score, as the router's argmax
            return new RouteDecision(e, Kind == RouterKind.WeightedFusion ? Softmax(s, WEIGHT_TEMPERATURE) : OneHot(e, Experts.Count), s);
        })];
    }

    private static float[] OneHot(int index, int count)
    {
        var v = new float[count];
        v[index] = 1;
        return v;
    }

    /// <summary>Softmax of <paramref name="scores"/> / τ (−∞ scores get weight 0).</summary>
    public static float[] Softmax(float[] scores, double temperature)
    {
        ArgumentNullException.ThrowIfNull(scores);
        var max = scores.Where(float.IsFinite).DefaultIfEmpty(0).Max();
        var exp = scores.Select(s => float.IsFinite(s) ? Math.Exp((s - max) / temperature) : 0).ToArray();
        var sum = exp.Sum();
        return [.. exp.Select(e => (float)(sum > 0 ? e / sum : 1.0 / scores.Length))];
    }

    /// <summary>
    /// Score fusion: each list's scores min-max normalised over the list (all 1 when they are equal), times its weight,
    /// summed per document; the best <paramref name="depth"/>, ties by key.
    /// </summary>
    public static (TKey[] Keys, float[] Scores) Fuse<TKey>(IReadOnlyList<(TKey[] Keys, float[] Scores)> lists, IReadOnlyList<float>? weights, int depth,
        IComparer<TKey>? tieOrder = null) where TKey : notnull
    {
        ArgumentNullException.ThrowIfNull(lists);
        var fused = new Dictionary<TKey, float>();
        for (var e = 0; e < lists.Count; e++)
        {
            var (keys, scores) = lists[e];
            var weight = weights?[e] ?? 1f;
            if (scores.Length == 0)
            {
                continue;
            }
            var (min, max) = (scores.Min(), scores.Max());
            var range = max - min;
            for (var i = 0; i < keys.Length; i++)
            {
                var normalised = range > 0 ? (scores[i] - min) / range : 1f;
                fused[keys[i]] = fused.GetValueOrDefault(keys[i]) + weight * normalised;
            }
        }
        var ranked = fused.OrderByDescending(p => p.Value).ThenBy(p => p.Key, tieOrder ?? Comparer<TKey>.Default).Take(depth).ToArray();
        return ([.. ranked.Select(p => p.Key)], [.. ranked.Select(p => p.Value)]);
    }
}
