using static TorchSharp.torch;

namespace MoeGrains.Retrieval;

/// <summary>Settings of <see cref="RetrievalBenchmark"/>.</summary>
public sealed class RetrievalBenchmarkOptions
{
    public const int DEFAULT_FOLDS = 2;
    public const int DEFAULT_SEED = 42;
    public const int DEFAULT_DEPTH = 100;

    /// <summary>Cross-validation folds for the routers: each query is routed by pilots built from the other folds only.</summary>
    public int Folds { get; set; } = DEFAULT_FOLDS;

    /// <summary>Seed of the shuffle that assigns queries to folds.</summary>
    public int Seed { get; set; } = DEFAULT_SEED;

    /// <summary>Documents retrieved per query (recall is measured at this depth).</summary>
    public int Depth { get; set; } = DEFAULT_DEPTH;

    /// <summary>The embedding expert whose query embeddings the routers compare with the pilots (RouterRetriever's base encoder).</summary>
    public string RouterEncoder { get; set; } = "minilm";

    /// <summary>Where document and query embeddings are cached; <c>null</c>: no cache.</summary>
    public EmbeddingCache? Cache { get; set; }

    /// <summary>Names settings that change the embeddings (part of the cache key).</summary>
    public string EmbeddingVariant { get; set; } = "";

    /// <summary>
    /// The embedding expert to train one domain expert on per collection (<see cref="LinearAdapterExpert"/>, from that
    /// collection's documents alone); <c>null</c>: none.
    /// </summary>
    public string? AdapterBase { get; set; }

    public AdapterTrainingOptions AdapterTraining { get; set; } = new();

    /// <summary>Where the domain adapters are saved after training (<c>adapter-{collection}.safetensors</c>), or read from with <see cref="LoadAdapters"/>; <c>null</c>: not saved.</summary>
    public string? AdapterFolder { get; set; }

    /// <summary>Read the adapters from <see cref="AdapterFolder"/> instead of training them.</summary>
    public bool LoadAdapters { get; set; }
}

/// <summary>nDCG@10 and recall@100 of one system, on one collection or averaged.</summary>
public sealed record SystemScore(string Name, double NdcgAt10, double RecallAt100);

/// <summary>The scores of every system on one collection.</summary>
public sealed record CollectionScores(string Name, int Documents, int Queries, IReadOnlyList<SystemScore> Systems);

/// <summary>What <see cref="RetrievalBenchmark.Run"/> measured: per collection, the macro average, and how the routers were trained.</summary>
public sealed record RetrievalReport(IReadOnlyList<CollectionScores> Collections, IReadOnlyList<SystemScore> Macro, string Split,
    IReadOnlyDictionary<string, IReadOnlyDictionary<string, IReadOnlyDictionary<string, int>>> RouterChoices);

/// <summary>
/// Every single expert, uniform score fusion, the pilot-embedding router (both matchings) and the per-query oracle, on
/// each collection's judged queries. The routers are trained by cross-validation over all collections at once: the
/// judged queries of each collection are shuffled (fixed seed) and dealt into folds; the queries of fold f are routed by
/// pilots built from the other folds of every collection, so no query is ever routed by pilots that saw it.
/// </summary>
public sealed class RetrievalBenchmark(IReadOnlyList<(string Name, IRetrieverExpert Expert)> givenExperts, RetrievalBenchmarkOptions? options = null)
{
    private List<(string Name, IRetrieverExpert Expert)> _experts = [.. givenExperts];

    public const string Fusion = "fusion";
    public const string RouterPrefix = "router-";
    public const string RouterNearest = "router-nearest-pilot";
    public const string RouterMean = "router-mean-similarity";
    public const string RouterDomain = "router-domain-pilots";
    public const string RouterWeighted = "router-weighted-fusion";

    public const string Oracle = "oracle";

    private readonly RetrievalBenchmarkOptions _options = options ?? new RetrievalBenchmarkOptions();

    /// <summary>The run of one expert on one query: ranked document ids and scores, and its metrics.</summary>
    private sealed record ExpertRun(string[] Documents, float[] Scores, double Ndcg, double Recall);

    private sealed record QueryRuns(string Collection, string Query, IReadOnlySet<string> Relevant, ExpertRun[] Experts, float[]? RouterEmbedding);

    public RetrievalReport Run(IReadOnlyList<RetrievalCollection> collections, Action<string>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(collections);
        if (_experts.Count == 0)
        {
            throw new ArgumentException("The benchmark needs at least one expert.");
        }
        if (_options.Folds < 2)
        {
            throw new ArgumentOutOfRangeException(nameof(options), "Cross-validation needs at least 2 folds.");
        }
        _experts = [.. givenExperts];
        var adapters = _options.AdapterBase is { } adapterBase ? TrainAdapters(collections, adapterBase, progress) : [];
        try
        {
            _experts.AddRange(adapters.Select(a => (a.Descriptor.Name, (IRetrieverExpert)a)));
            return RunAll(collections, progress);
        }
        finally
        {
            foreach (var a in adapters)
            {
                a.Dispose();
            }
        }
    }

    private List<LinearAdapterExpert> TrainAdapters(IReadOnlyList<RetrievalCollection> collections, string baseName, Action<string>? progress)
    {
        var found = givenExperts.FirstOrDefault(e => e.Name.Equals(baseName, StringComparison.OrdinalIgnoreCase));
        if (found.Expert is null || found.Expert.Descriptor.OutputDim <= 0)
        {
            throw new ArgumentException($"The adapters' base '{baseName}' must be one of the embedding experts ({string.Join(", ", givenExperts.Where(e => e.Expert.Descriptor.OutputDim > 0).Select(e => e.Name))}).");
        }
        var adapters = new List<LinearAdapterExpert>();
        try
        {
            foreach (var collection in collections)
            {
                var name = $"adapter-{collection.Name}";
                if (_options.LoadAdapters)
                {
                    var folder = _options.AdapterFolder ?? throw new ArgumentException("Loading adapters needs their folder.");
                    var path = LinearAdapterExpert.FileFor(folder, name);
                    adapters.Add(LinearAdapterExpert.Load(path, found.Expert, name));
                    progress?.Invoke($"{collection.Name}: adapter on {found.Name} read from {path}");
                    continue;
                }
                using var scope = NewDisposeScope();
                var pairs = collection.Documents.Select((d, i) => (Index: (long)i, Query: LinearAdapterExpert.PseudoQuery(d))).Where(p => p.Query.Length > 0).ToList();
                var documents = Encode(found.Expert, collection.Name, [.. collection.Documents.Select(d => d.FullText)], EncodeRole.Document, progress);
                var queries = Encode(found.Expert, collection.Name, [.. pairs.Select(p => p.Query)], EncodeRole.Query, progress);
                var training = _options.AdapterTraining;
                var (weight, loss) = LinearAdapterExpert.Train(queries, documents.index_select(0, tensor(pairs.Select(p => p.Index).ToArray())), training);
                progress?.Invoke($"{collection.Name}: adapter on {found.Name} trained on {pairs.Count} pseudo-queries (titles or first sentences), final InfoNCE loss {loss:F3}");
                var adapter = new LinearAdapterExpert(name, found.Expert, weight);
                weight.Dispose();
                adapters.Add(adapter);
                if (_options.AdapterFolder is { } save)
                {
                    var path = LinearAdapterExpert.FileFor(save, name);
                    adapter.Save(path, collection.Name, new Dictionary<string, string>
                    {
                        ["pairs"] = pairs.Count.ToString(System.Globalization.CultureInfo.InvariantCulture),
                        ["documents"] = collection.Documents.Count.ToString(System.Globalization.CultureInfo.InvariantCulture),
                        ["loss"] = loss.ToString("F4", System.Globalization.CultureInfo.InvariantCulture),
                        ["training"] = $"in-batch InfoNCE, tau {training.Temperature}, batch {training.BatchSize}, {training.Epochs} epochs, Adam {training.LearningRate}, seed {training.Seed}; pseudo-queries (titles or first sentences) against their documents; no query used",
                        ["embedding_variant"] = _options.EmbeddingVariant,
                    });
                    progress?.Invoke($"{collection.Name}: adapter saved to {path}");
                }
            }
        }
        catch
        {
            foreach (var a in adapters)
            {
                a.Dispose();
            }
            throw;
        }
        return adapters;
    }

    private RetrievalReport RunAll(IReadOnlyList<RetrievalCollection> collections, Action<string>? progress)
    {
        var routerIndex = _experts.ToList().FindIndex(e => e.Name.Equals(_options.RouterEncoder, StringComparison.OrdinalIgnoreCase));
        var canRoute = routerIndex >= 0 && _experts[routerIndex].Expert.Descriptor.OutputDim > 0;
        if (!canRoute)
        {
            progress?.Invoke($"no embedding expert named '{_options.RouterEncoder}' among the experts: the routers are left out");
        }
        var perCollection = collections.Select(c => RunExperts(c, canRoute ? routerIndex : -1, progress)).ToList();

        // Routers: one cross-validated pass over all collections at once; every router of RouterKind is fitted on
        // the same training folds (QueryRouter: the code the silo serves) and routes the held-out fold.
        var names = _experts.Select(e => e.Name).ToList();
        var kinds = Enum.GetValues<RouterKind>().Where(k => k != RouterKind.WeightedFusion || _experts.Count > 1).ToList();
        var decisions = kinds.ToDictionary(k => k, _ => new Dictionary<(string, string), RouteDecision>());
        if (canRoute)
        {
            var folds = new Dictionary<(string, string), int>();
            foreach (var runs in perCollection)
            {
                var shuffled = runs.Select(r => r.Query).ToArray();
                new Random(_options.Seed).Shuffle(shuffled);
                for (var i = 0; i < shuffled.Length; i++)
                {
                    folds[(runs.Count > 0 ? runs[0].Collection : "", shuffled[i])] = i % _options.Folds;
                }
            }
            var all = perCollection.SelectMany(r => r).ToList();
            for (var fold = 0; fold < _options.Folds; fold++)
            {
                var training = all.Where(q => folds[(q.Collection, q.Query)] != fold)
                    .Select(q => new PilotQuery(q.Collection, q.RouterEmbedding!, [.. q.Experts.Select(r => r.Ndcg)])).ToList();
                var held = all.Where(q => folds[(q.Collection, q.Query)] == fold).ToList();
                if (held.Count == 0)
                {
                    continue;
                }
                using var embeddings = stack([.. held.Select(q => tensor(q.RouterEmbedding!))]);
                foreach (var kind in kinds)
                {
                    var routed = QueryRouter.Fit(kind, names, training).Route(embeddings);
                    for (var i = 0; i < held.Count; i++)
                    {
                        decisions[kind][(held[i].Collection, held[i].Query)] = routed[i];
                    }
                }
            }
        }

        var reports = new List<CollectionScores>();
        var routerChoices = new Dictionary<string, IReadOnlyDictionary<string, IReadOnlyDictionary<string, int>>>();
        for (var c = 0; c < collections.Count; c++)
        {
            var runs = perCollection[c];
            var systems = new List<SystemScore>();
            for (var e = 0; e < _experts.Count; e++)
            {
                systems.Add(Average(_experts[e].Name, runs.Select(r => r.Experts[e])));
            }
            if (_experts.Count > 1)
            {
                systems.Add(Average(Fusion, runs.Select(FuseUniform)));
            }
            if (canRoute)
            {
                var choices = new Dictionary<string, IReadOnlyDictionary<string, int>>(StringComparer.Ordinal);
                foreach (var kind in kinds)
                {
                    var routed = decisions[kind];
                    systems.Add(Average(RouterPrefix + QueryRouter.Name(kind), runs.Select(r => kind == RouterKind.WeightedFusion
                        ? Fuse(r, routed[(r.Collection, r.Query)].Weights)
                        : r.Experts[routed[(r.Collection, r.Query)].Expert])));
                    if (kind != RouterKind.WeightedFusion)
                    {
                        choices[QueryRouter.Name(kind)] = _experts.Select((e, i) => (e.Name, Count: runs.Count(r => routed[(r.Collection, r.Query)].Expert == i)))
                            .ToDictionary(p => p.Name, p => p.Count);
                    }
                }
                routerChoices[collections[c].Name] = choices;
            }
            systems.Add(Average(Oracle, runs.Select(r => r.Experts.MaxBy(x => x.Ndcg)!)));
            reports.Add(new CollectionScores(collections[c].Name, collections[c].Documents.Count, runs.Count, systems));
        }
        var macro = reports.Count == 0 ? [] : reports[0].Systems.Select((s, i) =>
            new SystemScore(s.Name, reports.Average(r => r.Systems[i].NdcgAt10), reports.Average(r => r.Systems[i].RecallAt100))).ToList();
        var split = canRoute
            ? $"{_options.Folds}-fold cross-validation over the judged queries of each collection (shuffled with seed {_options.Seed}); pilots from the other folds of all collections, base encoder {_experts[routerIndex].Name}"
            : "no router";
        return new RetrievalReport(reports, macro, split, routerChoices);
    }

    private List<QueryRuns> RunExperts(RetrievalCollection collection, int routerIndex, Action<string>? progress)
    {
        var documents = collection.Documents.Select(d => d.FullText).ToList();
        var queries = collection.JudgedQueries;
        var queryTexts = queries.Select(q => q.Text).ToList();
        var runs = new ExpertRun[_experts.Count][];
        float[][]? routerEmbeddings = null;
        for (var e = 0; e < _experts.Count; e++)
        {
            var (name, expert) = _experts[e];
            progress?.Invoke($"{collection.Name}: {name} on {documents.Count} documents, {queries.Count} queries");
            SearchHits[] hits;
            if (expert.Descriptor.OutputDim > 0)
            {
                using var scope = NewDisposeScope();
                // An adapter shares its base's document embeddings (and cache); only its queries are mapped.
                var encoder = expert is LinearAdapterExpert adapter ? adapter.Base : expert;
                var docEmbeddings = Encode(encoder, collection.Name, documents, EncodeRole.Document, progress);
                var queryEmbeddings = Encode(encoder, collection.Name, queryTexts, EncodeRole.Query, progress);
                if (expert is LinearAdapterExpert a)
                {
                    queryEmbeddings = a.AdaptQueries(queryEmbeddings);
                }
                using var index = new ExactIndex(expert, docEmbeddings);
                hits = index.SearchEmbeddings(queryEmbeddings, _options.Depth);
                if (e == routerIndex)
                {
                    routerEmbeddings = [.. Enumerable.Range(0, queries.Count).Select(i => queryEmbeddings[i].data<float>().ToArray())];
                }
            }
            else
            {
                using var index = expert.Index(documents);
                hits = index.Search(queryTexts, _options.Depth);
            }
            runs[e] = [.. hits.Select((h, i) => Score(collection, queries[i], h))];
        }
        return [.. queries.Select((q, i) => new QueryRuns(collection.Name, q.Id, collection.Relevant[q.Id],
            [.. runs.Select(r => r[i])], routerEmbeddings?[i]))];
    }

    private Tensor Encode(IRetrieverExpert expert, string scope, IReadOnlyList<string> texts, EncodeRole role, Action<string>? progress) =>
        _options.Cache is { } cache
            ? cache.GetOrEncode(expert, scope, _options.EmbeddingVariant, texts, role, progress)
            : expert.Encode(texts, role);

    private static ExpertRun Score(RetrievalCollection collection, RetrievalQuery query, SearchHits hits)
    {
        var ids = hits.Documents.Select(d => collection.Documents[d].Id).ToArray();
        return MakeRun(ids, hits.Scores, collection.Relevant[query.Id]);
    }

    private static ExpertRun MakeRun(string[] ids, float[] scores, IReadOnlySet<string> relevant) =>
        new(ids, scores, RetrievalMetrics.NdcgAt(ids, relevant, 10), RetrievalMetrics.RecallAt(ids, relevant, 100));

    /// <summary>Uniform score fusion: each expert's scores min-max normalised over its own list, then summed.</summary>
    private ExpertRun FuseUniform(QueryRuns query) => Fuse(query, null);

    /// <summary>Score fusion (<see cref="QueryRouter.Fuse"/>): each expert's list min-max normalised, times its weight (1 when none), summed.</summary>
    private ExpertRun Fuse(QueryRuns query, float[]? weights)
    {
        var (ids, scores) = QueryRouter.Fuse([.. query.Experts.Select(r => (r.Documents, r.Scores))], weights, _options.Depth, StringComparer.Ordinal);
        return MakeRun(ids, scores, query.Relevant);
    }

    private static SystemScore Average(string name, IEnumerable<ExpertRun> runs)
    {
        var list = runs.ToList();
        return list.Count == 0 ? new SystemScore(name, 0, 0) : new SystemScore(name, list.Average(r => r.Ndcg), list.Average(r => r.Recall));
    }
}
