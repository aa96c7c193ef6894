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
/// The search flow of one collection, the same wherever it runs. The router (<see cref="QueryRouter"/>, by name; default
/// <see cref="QueryRouter.DEFAULT"/>, the best of the evaluation) is fitted on first use from pilot queries: this
/// collection's judged queries (each with every expert's nDCG@10 on it and its router-encoder embedding), plus those of
/// the other domains <paramref name="otherDomains"/> supplies. A search is routed (unless an expert is named) and run by
/// the chosen expert; a mixing router (weighted fusion) runs every expert and fuses their lists with its weights.
/// </summary>
public sealed class RetrievalFlow(RetrievalCollection collection, IReadOnlyList<string> experts, string routerEncoder, IRetrievalBackend backend,
    int maxPilotQueries = 1000, RouterKind router = QueryRouter.DEFAULT, Func<Task<IReadOnlyList<PilotQuery>>>? otherDomains = null)
{
    /// <summary>Documents each expert contributes to a fused list (the evaluation's depth).</summary>
    public const int FUSION_DEPTH = 100;

    private Task<IReadOnlyList<PilotQuery>>? _pilots;
    private readonly Dictionary<RouterKind, Task<QueryRouter>> _routers = [];
    private readonly object _gate = new();

    public RetrievalCollection Collection { get; } = collection;

    public IReadOnlyList<string> Experts { get; } = experts.Count > 0 ? experts : throw new ArgumentException("A retrieval flow needs at least one expert.", nameof(experts));

    /// <summary>The router used when a request names none.</summary>
    public RouterKind DefaultRouter { get; } = router;

    /// <summary>How many judged queries of this collection the pilots came from (after the router is built).</summary>
    public int PilotQueries { get; private set; }

    /// <summary>How many pilot queries of other domains the router was fitted on as well.</summary>
    public int OtherDomainPilotQueries { get; private set; }

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
        if (request.Router is { } r && !QueryRouter.TryParse(r, out _))
        {
            throw new RetrievalRequestException("router", $"Unknown router '{r}': one of {string.Join(", ", QueryRouter.Names)}.");
        }
    }

    /// <summary>Parses a router name, or throws <see cref="RetrievalRequestException"/> naming <paramref name="field"/>.</summary>
    public static RouterKind ParseRouter(string? name, string field = "router") =>
        name is null or "" ? QueryRouter.DEFAULT
        : QueryRouter.TryParse(name, out var kind) ? kind
        : throw new RetrievalRequestException(field, $"Unknown router '{name}': one of {string.Join(", ", QueryRouter.Names)}.");

    /// <summary>Routes (or takes the given expert) and searches.</summary>
    public async Task<RetrievalResult> Search(RetrievalRequest request, int maxK = 1000, int maxChars = 8192)
    {
        Validate(request, Experts, maxK, maxChars);
        var k = Math.Min(request.K, Collection.Documents.Count);
        if (request.Expert is { } given)
        {
            var named = (await backend.Search(given, [request.Query], k))[0];
            return Result(given, false, named, [], null, "");
        }
        var kind = request.Router is null ? DefaultRouter : ParseRouter(request.Router);
        var decision = await Route(request.Query, kind);
        if (kind != RouterKind.WeightedFusion || Experts.Count == 1)
        {
            var expert = Experts[decision.Expert];
            var hits = (await backend.Search(expert, [request.Query], k))[0];
            return Result(expert, true, hits, decision.Scores, decision.Weights, QueryRouter.Name(kind));
        }
        var depth = Math.Min(Math.Max(k, FUSION_DEPTH), Collection.Documents.Count);
        // Every expert searches at once; the lists keep the experts' order.
        var hitLists = await Task.WhenAll(Experts.Select(expert => backend.Search(expert, [request.Query], depth)));
        var (documents, scores) = QueryRouter.Fuse([.. hitLists.Select(h => (h[0].Documents, h[0].Scores))], decision.Weights, k);
        return Result(QueryRouter.Name(kind), true, new SearchHits(documents, scores), decision.Scores, decision.Weights, QueryRouter.Name(kind));
    }

    private RetrievalResult Result(string expert, bool routed, SearchHits hits, float[] scores, float[]? weights, string routerName)
    {
        var found = hits.Documents.Select((d, i) =>
        {
            var document = Collection.Documents[d];
            return new RetrievalHit(d, document.Id, hits.Scores[i], document.Title, document.Text);
        }).ToArray();
        return new RetrievalResult(Collection.Name, expert, routed, found, [.. Experts], scores, [], routerName, weights);
    }

    /// <summary>Where <paramref name="kind"/>'s router sends <paramref name="query"/>: the expert, the weights and the router's score per expert.</summary>
    public async Task<RouteDecision> Route(string query, RouterKind? kind = null)
    {
        if (Experts.Count == 1)
        {
            return new RouteDecision(0, [1f], [1f]);
        }
        var fitted = await Router(kind ?? DefaultRouter);
        var embedding = await backend.EncodeQueries(routerEncoder, [query]);
        using var scope = NewDisposeScope();
        return fitted.Route(tensor(embedding[0]).unsqueeze(0))[0];
    }

    /// <summary>The router of <paramref name="kind"/>, fitted once from the pilot queries.</summary>
    public Task<QueryRouter> Router(RouterKind kind)
    {
        lock (_gate)
        {
            if (!_routers.TryGetValue(kind, out var task) || task.IsFaulted || task.IsCanceled)
            {
                _routers[kind] = task = FitRouter(kind);
            }
            return task;
        }
    }

    private async Task<QueryRouter> FitRouter(RouterKind kind)
    {
        var own = await OwnPilotQueries();
        var others = otherDomains is null ? [] : (await otherDomains()).Where(q => q.Domain != Collection.Name).ToList();
        foreach (var q in others.Where(q => q.ExpertNdcg.Length != Experts.Count))
        {
            throw new InvalidOperationException($"Pilot queries of '{q.Domain}' score {q.ExpertNdcg.Length} experts; '{Collection.Name}' is searched by {Experts.Count}.");
        }
        OtherDomainPilotQueries = others.Count;
        return QueryRouter.Fit(kind, Experts, own.Concat(others));
    }

    /// <summary>This collection's judged queries (at most <paramref name="maxPilotQueries"/>) as pilot queries, computed once.</summary>
    public Task<IReadOnlyList<PilotQuery>> OwnPilotQueries()
    {
        lock (_gate)
        {
            if (_pilots is null || _pilots.IsFaulted || _pilots.IsCanceled)
            {
                _pilots = ComputePilotQueries();
            }
            return _pilots;
        }
    }

    private async Task<IReadOnlyList<PilotQuery>> ComputePilotQueries()
    {
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
        PilotQueries = queries.Count;
        return [.. queries.Select((q, i) => new PilotQuery(Collection.Name, embeddings[i], ndcg[i]))];
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
            // An adapter's documents are its base's embeddings: the base's cache serves them.
            var encoder = expert is LinearAdapterExpert adapter ? adapter.Base : expert;
            index = new ExactIndex(expert, _cache.GetOrEncode(encoder, _collection.Name, _variant, documents, EncodeRole.Document, _progress));
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
