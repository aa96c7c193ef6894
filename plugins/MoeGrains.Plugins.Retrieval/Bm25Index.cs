namespace MoeGrains.Plugins.Retrieval;

/// <summary>An inverted index with each term's postings (document, term frequency) and the BM25 weights precomputed.</summary>
internal sealed class Bm25Index : IRetrieverIndex
{
    private readonly Dictionary<string, (int[] Documents, float[] Weights)> _postings = new(StringComparer.Ordinal);

    public Bm25Index(IReadOnlyList<string> documents, double k1, double b, double epsilon)
    {
        ArgumentNullException.ThrowIfNull(documents);
        Count = documents.Count;
        var lengths = new int[Count];
        var frequencies = new Dictionary<string, List<(int Document, int Tf)>>(StringComparer.Ordinal);
        for (var d = 0; d < Count; d++)
        {
            var tokens = Bm25Expert.Tokenize(documents[d] ?? "");
            lengths[d] = tokens.Count;
            foreach (var group in tokens.GroupBy(t => t, StringComparer.Ordinal))
            {
                if (!frequencies.TryGetValue(group.Key, out var list))
                {
                    frequencies[group.Key] = list = [];
                }
                list.Add((d, group.Count()));
            }
        }
        if (Count == 0)
        {
            return;
        }
        var averageLength = Math.Max(lengths.Average(), 1e-9);
        var idf = frequencies.ToDictionary(p => p.Key, p => Math.Log((Count - p.Value.Count + 0.5) / (p.Value.Count + 0.5)), StringComparer.Ordinal);
        var floor = epsilon * (idf.Count == 0 ? 0 : idf.Values.Average());
        foreach (var (term, list) in frequencies)
        {
            var w = idf[term] < 0 ? floor : idf[term];
            var docs = new int[list.Count];
            var weights = new float[list.Count];
            for (var i = 0; i < list.Count; i++)
            {
                var (d, tf) = list[i];
                docs[i] = d;
                weights[i] = (float)(w * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[d] / averageLength)));
            }
            _postings[term] = (docs, weights);
        }
    }

    public int Count { get; }

    public SearchHits[] Search(IReadOnlyList<string> queries, int k)
    {
        ArgumentNullException.ThrowIfNull(queries);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        var results = new SearchHits[queries.Count];
        var scores = new float[Count];
        var matched = new bool[Count];
        var touched = new List<int>();
        for (var q = 0; q < queries.Count; q++)
        {
            foreach (var term in Bm25Expert.Tokenize(queries[q] ?? ""))
            {
                if (!_postings.TryGetValue(term, out var posting))
                {
                    continue;
                }
                for (var i = 0; i < posting.Documents.Length; i++)
                {
                    var d = posting.Documents[i];
                    if (!matched[d])
                    {
                        matched[d] = true;
                        touched.Add(d);
                    }
                    scores[d] += posting.Weights[i];
                }
            }
            // Best first; ties by position, so that runs are reproducible.
            var top = touched.OrderByDescending(d => scores[d]).ThenBy(d => d).Take(k).ToArray();
            results[q] = new SearchHits(top, [.. top.Select(d => scores[d])]);
            foreach (var d in touched)
            {
                scores[d] = 0;
                matched[d] = false;
            }
            touched.Clear();
        }
        return results;
    }

    public void Dispose()
    {
    }
}
