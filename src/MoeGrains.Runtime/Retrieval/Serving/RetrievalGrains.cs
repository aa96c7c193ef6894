using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Plugins;
using Orleans.Concurrency;
using static TorchSharp.torch;

namespace MoeGrains.Retrieval.Serving;

/// <summary>
/// One retriever expert on this silo's device (a plugin, or a trained adapter served by its plugin); encodes texts
/// (through the embedding cache where asked). An adapter whose base is served too leaves its documents to the base's
/// grain: they are the base's embeddings, so the base's cached corpus is reused.
/// </summary>
[StatelessWorker(1)]
internal sealed class RetrieverGrain(PluginCatalog plugins, SiloDevice device, IServiceProvider services, IOptions<RetrievalOptions> options,
    IOptions<TensorWireOptions> wire) : Grain, IRetrieverGrain
{
    private IRetrieverExpert? _expert;
    private string? _documentEncoder;

    private IRetrieverExpert Expert()
    {
        if (_expert is not null)
        {
            return _expert;
        }
        var name = this.GetPrimaryKeyString();
        var o = options.Value;
        if (!o.ExpertList.Contains(name, StringComparer.Ordinal))
        {
            throw new RetrievalRequestException("expert", $"Unknown retriever expert '{name}': this cluster serves {o.Experts}.");
        }
        var created = RetrieverExperts.Create(plugins, name, device.Device, o.PluginSettings(), services, o.Adapters);
        if (RetrieverExperts.AdapterBase(plugins, name, o.Adapters) is { } baseName && o.ExpertList.Contains(baseName, StringComparer.Ordinal))
        {
            _documentEncoder = baseName;
        }
        return _expert = created;
    }

    public Task<RetrieverInfo> Describe()
    {
        var expert = Expert();
        return Task.FromResult(new RetrieverInfo(expert.Descriptor.Name, expert.Descriptor.OutputDim, RuntimeIdentity));
    }

    public Task<WireTensor> Encode(string[] texts, EncodeRole role, string? cacheScope)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var expert = Expert();
        if (expert.Descriptor.OutputDim <= 0)
        {
            throw new RetrievalRequestException("model", $"'{expert.Descriptor.Name}' is a lexical expert: it has no embeddings.");
        }
        if (role == EncodeRole.Document && _documentEncoder is { } baseName)
        {
            return GrainFactory.GetGrain<IRetrieverGrain>(baseName).Encode(texts, role, cacheScope);
        }
        var o = options.Value;
        return device.Lane.RunAsync(() =>
        {
            using var scope = NewDisposeScope();
            var embeddings = cacheScope is not null && o.Cache is { Length: > 0 } folder
                ? new EmbeddingCache(folder).GetOrEncode(expert, cacheScope, o.EmbeddingVariant, texts, role)
                : expert.Encode(texts, role);
            return WireTensor.FromTensor(embeddings.to(ScalarType.Float32, CPU), TensorDType.Float32, wire.Value.MaxTensorBytes);
        });
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        var expert = _expert;
        _expert = null;
        _ = device.Lane.ReleaseAsync(expert);
        return Task.CompletedTask;
    }
}

/// <summary>
/// A slice of a collection indexed by one expert, on the silo <see cref="IndexShardPlacementAttribute"/> picks: the
/// slice's document embeddings (encoded by this silo's retriever grain) and exact top-k by one matrix product; a
/// lexical expert's whole index.
/// </summary>
[IndexShardPlacement]
internal sealed class IndexShardGrain(RetrievalCollections collections, PluginCatalog plugins, SiloDevice device, IServiceProvider services,
    IOptions<RetrievalOptions> options) : Grain, IIndexShardGrain
{
    private Tensor? _embeddings;
    private IRetrieverExpert? _lexical;
    private IRetrieverIndex? _lexicalIndex;
    private int _first;
    private int _count;
    private bool _loaded;

    public async Task<ShardHits> Search(string[] texts, WireTensor? embeddings, int k)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (!_loaded)
        {
            await Load();
        }
        var queries = embeddings is null ? texts.Length : (int)embeddings.Shape[0];
        if (_count == 0)
        {
            return new ShardHits([.. Enumerable.Range(0, queries).Select(_ => Array.Empty<int>())], [.. Enumerable.Range(0, queries).Select(_ => Array.Empty<float>())], RuntimeIdentity, _first, 0);
        }
        var hits = await device.Lane.RunAsync(() =>
        {
            if (_lexicalIndex is not null)
            {
                return _lexicalIndex.Search(texts, k);
            }
            if (embeddings is null || embeddings.Shape.Count != 2 || embeddings.Shape[1] != _embeddings!.shape[1])
            {
                throw new TensorValidationException($"Query embeddings must be [queries, {_embeddings!.shape[1]}], got {embeddings?.ToString() ?? "none"}.");
            }
            using var scope = NewDisposeScope();
            var q = embeddings.ToTensor(device.Device);
            var top = (int)Math.Min(k, _count);
            var (values, indices) = q.matmul(_embeddings.t()).topk(top, dim: 1);
            var scores = values.cpu().data<float>().ToArray();
            var ids = indices.to_type(ScalarType.Int32).cpu().data<int>().ToArray();
            return Enumerable.Range(0, queries).Select(i => new SearchHits(ids.AsSpan(i * top, top).ToArray(), scores.AsSpan(i * top, top).ToArray())).ToArray();
        });
        return new ShardHits([.. hits.Select(h => h.Documents.Select(d => d + _first).ToArray())], [.. hits.Select(h => h.Scores)], RuntimeIdentity, _first, _count);
    }

    private async Task Load()
    {
        var (name, expertName, shard, shards) = RetrievalKeys.ParseShard(this.GetPrimaryKeyString());
        var collection = collections.Get(name);
        var o = options.Value;
        var retriever = GrainFactory.GetGrain<IRetrieverGrain>(expertName);
        var info = await retriever.Describe();
        if (info.Dim <= 0)
        {
            if (shards != 1)
            {
                throw new RetrievalRequestException("expert", $"'{expertName}' is a lexical expert: its index is one shard (its statistics are corpus-wide).");
            }
            (_first, _count) = (0, collection.Documents.Count);
            var context = new PluginContext { Id = $"retrieval/{name}/{expertName}", Device = device.Device, Settings = o.PluginSettings() };
            _lexical = plugins.Create<IRetrieverExpert>(expertName, PluginKind.RetrieverExpert, context, services);
            var texts = collection.Documents.Select(d => d.FullText).ToList();
            _lexicalIndex = await device.Lane.RunAsync(() => _lexical.Index(texts));
            _loaded = true;
            return;
        }
        var align = o.Cache is { Length: > 0 } ? EmbeddingCache.DEFAULT_CHUNK : 1;
        (_first, _count) = RetrievalKeys.Range(collection.Documents.Count, shard, shards, align);
        var parts = new List<WireTensor>();
        for (var start = 0; start < _count; start += EmbeddingCache.DEFAULT_CHUNK)
        {
            var chunk = collection.Documents.Skip(_first + start).Take(Math.Min(EmbeddingCache.DEFAULT_CHUNK, _count - start)).Select(d => d.FullText).ToArray();
            parts.Add(await retriever.Encode(chunk, EncodeRole.Document, name));
        }
        _embeddings = await device.Lane.RunAsync(() =>
        {
            using var scope = NewDisposeScope();
            return parts.Count == 0
                ? zeros(0, info.Dim).DetachFromDisposeScope()
                : cat([.. parts.Select(p => p.ToTensor(device.Device))], 0).DetachFromDisposeScope();
        });
        _loaded = true;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        var (embeddings, index, lexical) = (_embeddings, _lexicalIndex, _lexical);
        (_embeddings, _lexicalIndex, _lexical, _loaded) = (null, null, null, false);
        _ = device.Lane.ReleaseAsync(embeddings, index, lexical);
        return Task.CompletedTask;
    }
}

/// <summary>
/// A collection's search flow on the calling silo: the <see cref="RetrievalFlow"/> over retriever grains (encoding) and
/// index shard grains (top-k per slice, merged here).
/// </summary>
[StatelessWorker]
internal sealed class RetrievalGrain(RetrievalCollections collections, IOptions<RetrievalOptions> options)
    : Grain, IRetrievalGrain, IRetrievalBackend
{
    private RetrievalFlow? _flow;
    private readonly Dictionary<string, int> _dims = new(StringComparer.Ordinal);
    private readonly SortedSet<string> _silos = new(StringComparer.Ordinal);

    private RetrievalFlow Flow()
    {
        if (_flow is not null)
        {
            return _flow;
        }
        var o = options.Value;
        var name = this.GetPrimaryKeyString();
        var others = o.PilotCollectionList.Where(c => c != name).ToList();
        Func<Task<IReadOnlyList<PilotQuery>>>? otherDomains = others.Count == 0 ? null : async () =>
        {
            var parts = await Task.WhenAll(others.Select(c => GrainFactory.GetGrain<IRetrievalGrain>(c).PilotQueries()));
            return [.. parts.SelectMany(p => p)];
        };
        return _flow = new RetrievalFlow(collections.Get(name), o.ExpertList, o.RouterEncoder, this, o.MaxPilotQueries,
            RetrievalFlow.ParseRouter(o.Router, "MoeGrains:Retrieval:Router"), otherDomains);
    }

    public async Task<RetrievalResult> Search(RetrievalRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var o = options.Value;
        var flow = Flow();
        RetrievalFlow.Validate(request, flow.Experts, o.MaxK, o.MaxTextChars);
        if (request.Expert is null && flow.Experts.Count > 1)
        {
            // Built before the search, so that the silos below are the search's own.
            await flow.Router(request.Router is null ? flow.DefaultRouter : RetrievalFlow.ParseRouter(request.Router));
        }
        _silos.Clear();
        var result = await flow.Search(request, o.MaxK, o.MaxTextChars);
        return result with { ShardSilos = [.. _silos] };
    }

    public async Task<PilotQuery[]> PilotQueries() => [.. await Flow().OwnPilotQueries()];

    private async Task<int> Dim(string expert)
    {
        if (!_dims.TryGetValue(expert, out var dim))
        {
            _dims[expert] = dim = (await GrainFactory.GetGrain<IRetrieverGrain>(expert).Describe()).Dim;
        }
        return dim;
    }

    public async Task<float[][]> EncodeQueries(string expert, IReadOnlyList<string> texts)
    {
        var encoded = await GrainFactory.GetGrain<IRetrieverGrain>(expert).Encode([.. texts], EncodeRole.Query);
        var values = encoded.ToFloatArray();
        var dim = (int)encoded.Shape[1];
        return [.. Enumerable.Range(0, texts.Count).Select(i => values.AsSpan(i * dim, dim).ToArray())];
    }

    public async Task<SearchHits[]> Search(string expert, IReadOnlyList<string> queries, int k)
    {
        var collection = this.GetPrimaryKeyString();
        if (await Dim(expert) <= 0)
        {
            var lexical = await GrainFactory.GetGrain<IIndexShardGrain>(RetrievalKeys.Shard(collection, expert, 0, 1)).Search([.. queries], null, k);
            _silos.Add(lexical.Silo);
            return [.. lexical.Documents.Select((d, i) => new SearchHits(d, lexical.Scores[i]))];
        }
        var shards = Math.Max(1, options.Value.Shards);
        var embeddings = await GrainFactory.GetGrain<IRetrieverGrain>(expert).Encode([.. queries], EncodeRole.Query);
        var answers = await Task.WhenAll(Enumerable.Range(0, shards).Select(s =>
            GrainFactory.GetGrain<IIndexShardGrain>(RetrievalKeys.Shard(collection, expert, s, shards)).Search([], embeddings, k)));
        foreach (var a in answers.Where(a => a.Count > 0))
        {
            _silos.Add(a.Silo);
        }
        return [.. Enumerable.Range(0, queries.Count).Select(q => RetrievalFlow.Merge(answers.Select(a => new SearchHits(a.Documents[q], a.Scores[q])), k))];
    }
}
