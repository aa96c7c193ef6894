using static TorchSharp.torch;

namespace MoeGrains.Retrieval;

/// <summary>How a query is matched against the pilot embeddings.</summary>
public enum PilotMatch
{
    /// <summary>The expert owning the single most similar pilot (RouterRetriever's code).</summary>
    NearestPilot,

    /// <summary>The expert whose pilots are most similar on average (RouterRetriever's paper).</summary>
    MeanSimilarity,
}

/// <summary>
/// RouterRetriever's router: each training query is assigned to the expert that serves it best (highest nDCG@10, ties
/// to the first expert; queries no expert answers at all teach nothing and are skipped); the queries of each
/// (domain, expert) group are embedded with a base encoder and their centroid (k-means with k = 1) becomes one pilot
/// embedding of that expert. A new query goes to the expert of the nearest pilot, or of the highest mean similarity.
/// Adding an expert is adding its pilots: nothing is retrained.
/// </summary>
public sealed class PilotEmbeddingRouter
{
    private readonly List<(string Group, int Expert, float[] Embedding)> _training = [];
    private Tensor? _pilots;
    private int[] _pilotExperts = [];

    public PilotEmbeddingRouter(IReadOnlyList<string> experts, PilotMatch match = PilotMatch.NearestPilot)
    {
        ArgumentNullException.ThrowIfNull(experts);
        if (experts.Count == 0)
        {
            throw new ArgumentException("A router needs at least one expert.", nameof(experts));
        }
        Experts = experts;
        Match = match;
    }

    public IReadOnlyList<string> Experts { get; }

    public PilotMatch Match { get; }

    /// <summary>How many pilots each expert has after <see cref="Fit"/>.</summary>
    public IReadOnlyList<int> PilotsPerExpert => [.. Enumerable.Range(0, Experts.Count).Select(e => _pilotExperts.Count(p => p == e))];

    /// <summary>Adds a training query: its base embedding, its domain and each expert's nDCG@10 on it.</summary>
    public void AddTrainingQuery(string group, float[] embedding, IReadOnlyList<double> expertScores)
    {
        ArgumentNullException.ThrowIfNull(embedding);
        ArgumentNullException.ThrowIfNull(expertScores);
        if (expertScores.Count != Experts.Count)
        {
            throw new ArgumentException($"Expected {Experts.Count} expert scores, got {expertScores.Count}.", nameof(expertScores));
        }
        var best = 0;
        for (var e = 1; e < expertScores.Count; e++)
        {
            if (expertScores[e] > expertScores[best])
            {
                best = e;
            }
        }
        if (expertScores[best] > 0)
        {
            _training.Add((group, best, embedding));
        }
    }

    /// <summary>Builds the pilot library from the training queries added so far.</summary>
    public void Fit()
    {
        if (_training.Count == 0)
        {
            throw new InvalidOperationException("No training query was answered by any expert: there is nothing to build pilots from.");
        }
        _pilots?.Dispose();
        var groups = _training.GroupBy(t => (t.Group, t.Expert)).OrderBy(g => g.Key.Group, StringComparer.Ordinal).ThenBy(g => g.Key.Expert).ToList();
        using var scope = NewDisposeScope();
        var centroids = groups.Select(g => stack([.. g.Select(t => tensor(t.Embedding))]).mean([0])).ToList();
        _pilots = stack(centroids).DetachFromDisposeScope();
        _pilotExperts = [.. groups.Select(g => g.Key.Expert)];
    }

    /// <summary>The expert (index into <see cref="Experts"/>) each query embedding <c>[queries, dim]</c> is routed to.</summary>
    public int[] Route(Tensor queryEmbeddings)
    {
        ArgumentNullException.ThrowIfNull(queryEmbeddings);
        if (_pilots is null)
        {
            throw new InvalidOperationException("Call Fit before Route.");
        }
        using var scope = NewDisposeScope();
        var similarity = queryEmbeddings.to_type(ScalarType.Float32).matmul(_pilots.t()); // [queries, pilots]
        if (Match == PilotMatch.NearestPilot)
        {
            var nearest = similarity.argmax(1).data<long>().ToArray();
            return [.. nearest.Select(p => _pilotExperts[p])];
        }
        return [.. MeanPerExpert(similarity).argmax(1).data<long>().ToArray().Select(x => (int)x)];
    }

    /// <summary>Each query's mean similarity to each expert's pilots <c>[queries][experts]</c> (−∞ for an expert without pilots).</summary>
    public float[][] ExpertSimilarities(Tensor queryEmbeddings)
    {
        ArgumentNullException.ThrowIfNull(queryEmbeddings);
        if (_pilots is null)
        {
            throw new InvalidOperationException("Call Fit before ExpertSimilarities.");
        }
        using var scope = NewDisposeScope();
        var perExpert = MeanPerExpert(queryEmbeddings.to_type(ScalarType.Float32).matmul(_pilots.t())).contiguous();
        var values = perExpert.data<float>().ToArray();
        return [.. Enumerable.Range(0, (int)perExpert.shape[0]).Select(q => values.AsSpan(q * Experts.Count, Experts.Count).ToArray())];
    }

    /// <summary>Each query's similarity to each expert's nearest pilot <c>[queries][experts]</c> (−∞ for an expert without pilots).</summary>
    public float[][] ExpertMaxSimilarities(Tensor queryEmbeddings)
    {
        ArgumentNullException.ThrowIfNull(queryEmbeddings);
        if (_pilots is null)
        {
            throw new InvalidOperationException("Call Fit before ExpertMaxSimilarities.");
        }
        using var scope = NewDisposeScope();
        var similarity = queryEmbeddings.to_type(ScalarType.Float32).matmul(_pilots.t()).contiguous();
        var values = similarity.data<float>().ToArray();
        var pilots = _pilotExperts.Length;
        return [.. Enumerable.Range(0, (int)similarity.shape[0]).Select(q =>
        {
            var best = Enumerable.Repeat(float.NegativeInfinity, Experts.Count).ToArray();
            for (var p = 0; p < pilots; p++)
            {
                best[_pilotExperts[p]] = Math.Max(best[_pilotExperts[p]], values[q * pilots + p]);
            }
            return best;
        })];
    }

    private Tensor MeanPerExpert(Tensor similarity)
    {
        var perExpert = full(similarity.shape[0], Experts.Count, float.NegativeInfinity);
        for (var e = 0; e < Experts.Count; e++)
        {
            var columns = Enumerable.Range(0, _pilotExperts.Length).Where(p => _pilotExperts[p] == e).Select(p => (long)p).ToArray();
            if (columns.Length > 0)
            {
                perExpert[TensorIndex.Colon, e] = similarity.index_select(1, tensor(columns)).mean([1]);
            }
        }
        return perExpert;
    }
}
