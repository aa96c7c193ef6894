using MoeGrains.Contracts;
using static TorchSharp.torch;

namespace MoeGrains.Retrieval.Serving;

/// <summary>
/// Where a <see cref="RetrievalFlow"/> encodes and searches: in this process (<see cref="InProcessRetrieval"/>), or
/// through retriever and index shard grains on a cluster (<see cref="RetrievalGrain"/>).
/// </summary>
public interface IRetrievalBackend
{
    /// <summary>Query embeddings <c>[texts, dim]</c> by an embedding expert, as rows.</summary>
    Task<float[][]> EncodeQueries(string expert, IReadOnlyList<string> texts);

    /// <summary>The best <paramref name="k"/> documents (positions in the collection) and scores for each query, best first.</summary>
    Task<SearchHits[]> Search(string expert, IReadOnlyList<string> queries, int k);
}

/// <summary>
/// The search flow of one collection, the same wherever it runs: the pilot-embedding router (RouterRetriever) is built
/// on first use from the collection's judged queries (each assigned to the expert with its best nDCG@10; one pilot per
/// expert, the centroid of its queries' router-encoder embeddings; a query goes to the expert of highest mean pilot
/// similarity); a search is routed (unless an expert is named), then run by that expert.
/// </summary>
public sealed class RetrievalFlow(RetrievalCollection collection, IReadOnlyList<string> experts, string routerEncoder, IRetrievalBackend backend,
    int maxPilotQueries = 1000)
{
    private Task<PilotEmbeddingRouter>? _router;
    private readonly object _gate = new();

    public RetrievalCollection Collection { get; } = collection;

    public IReadOnlyList<string> Experts { get; } = experts.Count > 0 ? experts : throw new ArgumentException("A retrieval flow needs at least one expert.", nameof(experts));

    /// <summary>How many judged queries the router's pilots came from (after it is built).</summary>
    public int PilotQueries { get; private set; }

    /// <summary>Validates a request against the collection and the limits; throws <see cref="RetrievalRequestException"/> naming the field.</summary>
    public static void Validate(RetrievalRequest request, IReadOnlyList<string> experts, int maxK, int maxChars)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (string.IsNullOrWhiteSpace(request.Query))
        {
            throw new RetrievalRequestException("query", "The query is empty.");
        }
        if (request.Query.Length > maxChars)
        {
            throw new RetrievalRequestException("query", $"The query has {request.Query.Length} characters; the limit is {maxChars}.");
        }
        if (request.K < 1 || request.K > maxK)
        {
            throw new RetrievalRequestException("k", $"k must be between 1 and {maxK}, got {request.K}.");
        }
        if (request.Expert is { } e && !experts.Contains(e, StringComparer.Ordinal))
        {
            throw new RetrievalRequestException("expert", $"Unknown expert '{e}': this collection is searched by {string.Join(", ", experts)}.");
        }
    }

    /// <summary>Routes (or takes the given expert) and searches.</summary>
    public async Task<RetrievalResult> Search(RetrievalRequest request, int maxK = 1000, int maxChars = 8192)
    {
        Validate(request, Experts, maxK, maxChars);
        string expert;
        float[] scores = [];
        if (request.Expert is { } given)
        {
            expert = given;
        }
        else
        {
            (var chosen, scores) = await Route(request.Query);
            expert = Experts[chosen];
        }
        var hits = (await backend.Search(expert, [request.Query], Math.Min(request.K, Collection.Documents.Count)))[0];
        var found = hits.Documents.Select((d, i) =>
        {
            var document = Collection.Documents[d];
            return new RetrievalHit(d, document.Id, hits.Scores[i], document.Title, document.Text);
        }).ToArray();
        return new RetrievalResult(Collection.Name, expert, request.Expert is null, found, [.. Experts], scores, []);
    }

    /// <summary>The expert (index into <see cref="Experts"/>) the router sends <paramref name="query"/> to, and its mean pilot similarity per expert.</summary>
    public async Task<(int Expert, float[] Scores)> Route(string query)
    {
        var router = await Router();
        var embedding = await backend.EncodeQueries(routerEncoder, [query]);
        using var scope = NewDisposeScope();
        var similarities = router.ExpertSimilarities(tensor(embedding[0]).unsqueeze(0))[0];
        var best = 0;
        for (var e = 1; e < similarities.Length; e++)
        {
            if (similarities[e] > similarities[best])
            {
                best = e;
            }
        }
        return (best, similarities);
    }

    /// <summary>The router, built once from the judged queries.</summary>
    public Task<PilotEmbeddingRouter> Router()
    {
        lock (_gate)
        {
            if (_router is null || _router.IsFaulted || _router.IsCanceled)
            {
                _router = BuildRouter();
            }
            return _router;
        }
    }

    private async Task<PilotEmbeddingRouter> BuildRouter()
    {
        if (Experts.Count == 1)
        {
            var single = new PilotEmbeddingRouter(Experts, PilotMatch.MeanSimilarity);
            var dim = (await backend.EncodeQueries(routerEncoder, ["pilot"]))[0].Length;
            single.AddTrainingQuery(Collection.Name, new float[dim], [1.0]);
            single.Fit();
            return single;
        }
        var queries = Collection.JudgedQueries.Take(maxPilotQueries).ToList();
        if (queries.Count == 0)
        {
            throw new RetrievalRequestException("collection", $"Collection '{Collection.Name}' has no judged queries to build the router's pilots from: name an expert.");
        }
        var texts = queries.Select(q => q.Text).ToList();
        var ndcg = new double[queries.Count][];
        for (var q = 0; q < queries.Count; q++)
        {
            ndcg[q] = new double[Experts.Count];
        }
        for (var e = 0; e < Experts.Count; e++)
        {
            var hits = await backend.Search(Experts[e], texts, 10);
            for (var q = 0; q < queries.Count; q++)
            {
                var ids = hits[q].Documents.Select(d => Collection.Documents[d].Id).ToList();
                ndcg[q][e] = RetrievalMetrics.NdcgAt(ids, Collection.Relevant[queries[q].Id], 10);
            }
        }
        var embeddings = await backend.EncodeQueries(routerEncoder, texts);
        var router = new PilotEmbeddingRouter(Experts, PilotMatch.MeanSimilarity);
        for (var q = 0; q < queries.Count; q++)
        {
            router.AddTrainingQuery(Collection.Name, embeddings[q], ndcg[q]);
        }
        router.Fit();
        PilotQueries = queries.Count;
        return router;
    }

    /// <summary>Merges shard hits: best score first, ties by collection position; the first <paramref name="k"/>.</summary>
    public static SearchHits Merge(IEnumerable<SearchHits> shards, int k)
    {
        var all = shards.SelectMany(s => s.Documents.Select((d, i) => (Document: d, Score: s.Scores[i])))
            .OrderByDescending(h => h.Score).ThenBy(h => h.Document).Take(k).ToArray();
        return new SearchHits([.. all.Select(h => h.Document)], [.. all.Select(h => h.Score)]);
    }
}

/// <summary>A <see cref="IRetrievalBackend"/> in this process: the experts' own indexes over the whole collection.</summary>
public sealed class InProcessRetrieval : IRetrievalBackend, IDisposable
{
    private readonly RetrievalCollection _collection;
    private readonly Dictionary<string, IRetrieverExpert> _experts;
    private readonly Dictionary<string, IRetrieverIndex> _indexes = new(StringComparer.Ordinal);
    private readonly EmbeddingCache? _cache;
    private readonly string _variant;
    private readonly Action<string>? _progress;

    /// <summary>The experts stay the caller's.</summary>
    public InProcessRetrieval(RetrievalCollection collection, IReadOnlyDictionary<string, IRetrieverExpert> experts, EmbeddingCache? cache = null,
        string variant = "", Action<string>? progress = null)
    {
        _collection = collection;
        _experts = new Dictionary<string, IRetrieverExpert>(experts, StringComparer.Ordinal);
        _cache = cache;
        _variant = variant;
        _progress = progress;
    }

    private IRetrieverExpert Expert(string name) => _experts.TryGetValue(name, out var e) ? e : throw new RetrievalRequestException("expert", $"Unknown expert '{name}'.");

    public Task<float[][]> EncodeQueries(string expert, IReadOnlyList<string> texts)
    {
        using var scope = NewDisposeScope();
        var embeddings = Expert(expert).Encode(texts, EncodeRole.Query).to(ScalarType.Float32, CPU);
        return Task.FromResult(Enumerable.Range(0, texts.Count).Select(i => embeddings[i].data<float>().ToArray()).ToArray());
    }

    public Task<SearchHits[]> Search(string expert, IReadOnlyList<string> queries, int k)
    {
        var index = IndexOf(expert);
        return Task.FromResult(index.Search(queries, k));
    }

    private IRetrieverIndex IndexOf(string name)
    {
        if (_indexes.TryGetValue(name, out var index))
        {
            return index;
        }
        var expert = Expert(name);
        var documents = _collection.Documents.Select(d => d.FullText).ToList();
        if (expert.Descriptor.OutputDim > 0 && _cache is not null)
        {
            index = new ExactIndex(expert, _cache.GetOrEncode(expert, _collection.Name, _variant, documents, EncodeRole.Document, _progress));
        }
        else
        {
            _progress?.Invoke($"{_collection.Name}: indexing {documents.Count} documents with {name}");
            index = expert.Index(documents);
        }
        _indexes[name] = index;
        return index;
    }

    public void Dispose()
    {
        foreach (var index in _indexes.Values)
        {
            index.Dispose();
        }
        _indexes.Clear();
    }
}
