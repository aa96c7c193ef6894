namespace MoeGrains.Retrieval;

/// <summary>Rank metrics with binary relevance, as trec_eval computes them (<c>ndcg_cut</c>, <c>recall</c>).</summary>
public static class RetrievalMetrics
{
    /// <summary>
    /// nDCG@k: DCG = Σ rel_i / log2(i + 1) over ranks i = 1..k, divided by the DCG of the ideal ranking (all relevant
    /// documents first). 0 when nothing is relevant.
    /// </summary>
    public static double NdcgAt(IReadOnlyList<string> ranked, IReadOnlySet<string> relevant, int k)
    {
        ArgumentNullException.ThrowIfNull(ranked);
        ArgumentNullException.ThrowIfNull(relevant);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (relevant.Count == 0)
        {
            return 0;
        }
        double dcg = 0, ideal = 0;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < Math.Min(k, ranked.Count); i++)
        {
            if (relevant.Contains(ranked[i]) && seen.Add(ranked[i]))
            {
                dcg += 1.0 / Math.Log2(i + 2);
            }
        }
        for (var i = 0; i < Math.Min(k, relevant.Count); i++)
        {
            ideal += 1.0 / Math.Log2(i + 2);
        }
        return dcg / ideal;
    }

    /// <summary>Recall@k: the share of the relevant documents found in the first k.</summary>
    public static double RecallAt(IReadOnlyList<string> ranked, IReadOnlySet<string> relevant, int k)
    {
        ArgumentNullException.ThrowIfNull(ranked);
        ArgumentNullException.ThrowIfNull(relevant);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (relevant.Count == 0)
        {
            return 0;
        }
        var found = ranked.Take(k).Where(relevant.Contains).Distinct(StringComparer.Ordinal).Count();
        return (double)found / relevant.Count;
    }
}
