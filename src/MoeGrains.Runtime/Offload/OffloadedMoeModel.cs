using System.Diagnostics;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Models;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Offload;

/// <summary>How a model's experts are kept on the device.</summary>
public sealed record OffloadOptions
{
    public ExpertCacheBudget Budget { get; init; } = new();

    public ExpertCachePolicy Policy { get; init; } = ExpertCachePolicy.Lru;

    /// <summary>Prefetch the next layer's predicted experts while a layer computes (default: with the predictive policy).</summary>
    public bool? Prefetch { get; init; }

    /// <summary>Least predicted probability for a prefetch.</summary>
    public double PrefetchThreshold { get; init; } = 0.25;

    /// <summary>Most experts prefetched for one layer (0: the layer's experts).</summary>
    public int PrefetchLimit { get; init; }

    public bool PrefetchEnabled => Prefetch ?? Policy == ExpertCachePolicy.Predictive;
}

/// <summary>How well the next layer's experts were predicted: of the experts a layer used, how many were predicted.</summary>
public sealed record PredictionStats(long Predicted, long Used, long Correct)
{
    /// <summary>Used experts that had been predicted (recall).</summary>
    public double Recall => Used == 0 ? 0 : (double)Correct / Used;

    /// <summary>Predicted experts that were used.</summary>
    public double Precision => Predicted == 0 ? 0 : (double)Correct / Predicted;
}

/// <summary>
/// A model whose experts live in an <see cref="ExpertWeightStore"/> and come to the device through a
/// <see cref="DeviceExpertCache{T}"/> under a budget; routers (non-expert weights) stay resident, as in EdgeMoE. Each
/// layer step routes the batch, tells the cache which experts it needs now and (predictive policy) how soon each
/// resident expert is expected to be needed again, starts prefetching the next layer's predicted experts
/// (<see cref="RoutingPathPredictor"/>) while this layer computes, then computes its experts one at a time: an expert
/// that was not predicted is loaded on demand (the correction). Prefetching never changes results: it only decides
/// when the same weights are read. An expert whose file is corrupt fails alone and is masked like any failed expert.
/// </summary>
public sealed class OffloadedMoeModel : IDisposable
{
    private readonly PluginCatalog _plugins;
    private readonly ExpertWeightStore _store;
    private readonly IServiceProvider _services;
    private readonly Dictionary<int, IRouter> _routers = [];
    private readonly SafeTensorsFile? _routerCheckpoint;
    private readonly Lock _gate = new();
    private readonly long _largestExpertBytes;
    private HashSet<int>? _predictedNext;
    private long _predicted, _used, _correct;
    private DeviceBytes _deviceBytes;

    public OffloadedMoeModel(PluginCatalog plugins, ExpertWeightStore store, IServiceProvider services, OffloadOptions options,
        RoutingPathPredictor? predictor = null, string? routerCheckpoint = null, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        _plugins = plugins;
        _store = store;
        _services = services;
        Options = options;
        Predictor = predictor;
        Device = device ?? CPU;
        Spec = store.Spec;
        if (predictor is not null && (predictor.Layers != Spec.Layers || predictor.Experts != Spec.Experts))
        {
            throw new ArgumentException($"The predictor covers {predictor.Layers} layers x {predictor.Experts} experts, the model {Spec.Layers} x {Spec.Experts}.", nameof(predictor));
        }
        if (options.Policy == ExpertCachePolicy.Predictive && predictor is null)
        {
            throw new ArgumentException("The predictive policy needs a routing-path predictor.", nameof(predictor));
        }
        _largestExpertBytes = store.Entries.Max(e => e.DeviceBytes);
        options.Budget.Validate(_largestExpertBytes);
        _routerCheckpoint = routerCheckpoint is null ? null : SafeTensorsFile.Open(routerCheckpoint);
        Cache = new DeviceExpertCache<ResidentExpert>(options.Budget, options.Policy, id => store.Entry(id.Layer, id.Expert).DeviceBytes, LoadExpert);
    }

    public ModelSpec Spec { get; }

    public Device Device { get; }

    public OffloadOptions Options { get; }

    public RoutingPathPredictor? Predictor { get; }

    public DeviceExpertCache<ResidentExpert> Cache { get; }

    /// <summary>Called with each layer's routing (and the rows' token ids, when known): to record traces.</summary>
    public Action<int, RoutingResult, long[]?>? OnRouted { get; set; }

    /// <summary>
    /// Bytes of expert weights that exist as tensors on the device now, and at most so far. An expert in the cache becomes
    /// device tensors when it is first used; until then (prefetched, being read) its weights wait in host memory, though
    /// the cache's budget already counts them.
    /// </summary>
    public long DeviceExpertBytes => _deviceBytes.Now;

    /// <inheritdoc cref="DeviceExpertBytes"/>
    public long PeakDeviceExpertBytes => _deviceBytes.Peak;

    public PredictionStats Prediction
    {
        get
        {
            lock (_gate) return new PredictionStats(_predicted, _used, _correct);
        }
    }

    // Any thread: reads, checks and dequantises into host memory; no tensor is made here.
    private (ResidentExpert, long) LoadExpert(ExpertId id)
    {
        var host = _store.ReadHost(id.Layer, id.Expert);
        return (new ResidentExpert(host), host.BytesRead);
    }

    // The compute thread: the host weights become the plugin's tensors on the device (counted until the expert is evicted).
    private IExpert Materialise(ResidentExpert resident, ExpertId id)
    {
        if (resident.Expert is { } made)
        {
            return made;
        }
        var bytes = _store.Entry(id.Layer, id.Expert).DeviceBytes;
        var expert = resident.Get(host => CreateExpert(_plugins, Spec, id, host, Device, _services));
        _deviceBytes.Add(bytes);
        resident.Released = () => _deviceBytes.Add(-bytes);
        return expert;
    }

    /// <summary>Makes the plugin of expert <paramref name="id"/> from its host weights, on <paramref name="device"/> (call on the thread that computes).</summary>
    internal static IExpert CreateExpert(PluginCatalog plugins, ModelSpec spec, ExpertId id, HostExpertWeights host, Device device, IServiceProvider services)
    {
        using var weights = host.ToTensors(device);
        // Holds whatever temporaries the plugin makes while it copies its weights (left to the finalizer thread, one can be
        // freed while libtorch still reads it) and frees them here; the plugin keeps only the tensors it detached.
        using var scope = NewDisposeScope();
        var context = new PluginContext
        {
            Id = $"{spec.Name}/{id.Layer}/{id.Expert}",
            Layer = id.Layer,
            Index = id.Expert,
            Device = device,
            Settings = spec.Settings,
            Weights = weights.Weights,
        };
        return plugins.Create<IExpert>(spec.ExpertPlugin, PluginKind.Expert, context, services);
    }

    /// <summary>
    /// An expert in the device cache: its host weights until first used, then the plugin made from them. Loads (and
    /// prefetches) fill the host weights on any thread; the plugin is made on the thread that computes.
    /// </summary>
    public sealed class ResidentExpert(HostExpertWeights host) : IDisposable
    {
        private HostExpertWeights? _host = host;

        public IExpert? Expert { get; private set; }

        /// <summary>Called once when a made expert is disposed (evicted).</summary>
        internal Action? Released { get; set; }

        internal IExpert Get(Func<HostExpertWeights, IExpert> create)
        {
            if (Expert is null)
            {
                Expert = create(_host!);
                _host = null;
            }
            return Expert;
        }

        public void Dispose()
        {
            if (Expert is not null)
            {
                Expert.Dispose();
                Expert = null;
                Released?.Invoke();
                Released = null;
            }
            _host = null;
        }
    }

    /// <summary>The layer's router (resident), from the router checkpoint given, created on first use.</summary>
    public IRouter Router(int layer)
    {
        lock (_gate)
        {
            if (!_routers.TryGetValue(layer, out var r))
            {
                if (_routerCheckpoint is null)
                {
                    throw new InvalidOperationException("This offloaded model has no router checkpoint: pass the routing of each layer.");
                }
                _routers[layer] = r = PluginFactory.CreateRouter(_plugins, Spec, _routerCheckpoint, layer, Device, _services, null);
            }
            return r;
        }
    }

    /// <summary>Loads every expert the budget holds, in order (a warm, all-resident start when the budget is 100%).</summary>
    public void Preload()
    {
        foreach (var e in _store.Entries.Take(Math.Min(Options.Budget.MaxExperts, _store.Count)))
        {
            var id = new ExpertId(e.Layer, e.Expert);
            using var lease = Cache.Acquire(id);
            Materialise(lease.Value, id);
        }
    }

    /// <summary>
    /// Runs one layer on <paramref name="hidden"/> <c>[tokens, d_model]</c>: routed by the layer's router, or by
    /// <paramref name="routing"/> when given (a replayed trace). <paramref name="tokenIds"/> (one per row) help the predictor.
    /// </summary>
    public Task<MoeLayerOutput> ForwardLayerAsync(int layer, Tensor hidden, long[]? tokenIds = null, RoutingResult? routing = null, CancellationToken cancellationToken = default)
    {
        if ((uint)layer >= (uint)Spec.Layers)
        {
            throw new UnknownExpertException($"Model '{Spec.Name}' has {Spec.Layers} layers; layer {layer} does not exist.");
        }
        if (tokenIds is not null && tokenIds.Length != hidden.shape[0])
        {
            throw new ArgumentException($"{tokenIds.Length} token ids for {hidden.shape[0]} rows.", nameof(tokenIds));
        }
        routing ??= Routing.Route(Router(layer), hidden, Routing.Availability(Spec.Experts, null));
        OnRouted?.Invoke(layer, routing, tokenIds);
        var needed = routing.Experts.Where(e => e >= 0).Distinct().Order().ToArray();
        Plan(layer, routing, needed, tokenIds);
        return MoeLayerRunner.RunAsync(hidden, routing, Spec.Experts, Spec.DModel, (e, batch, ct) =>
        {
            var sw = Stopwatch.StartNew();
            var id = new ExpertId(layer, e);
            using var lease = Cache.Acquire(id, ct);
            var expert = Materialise(lease.Value, id);
            using var _ = no_grad();
            var y = expert.Forward(batch);
            return Task.FromResult(new ExpertAnswer(y, "local", sw.Elapsed.TotalMilliseconds, 0));
        }, 1, TimeSpan.FromMinutes(5), cancellationToken);
    }

    // Scores what is resident by when it is next expected to be used, and prefetches the next layer's likely experts.
    private void Plan(int layer, RoutingResult routing, int[] needed, long[]? tokenIds)
    {
        lock (_gate)
        {
            if (_predictedNext is not null)
            {
                _used += needed.Length;
                _correct += needed.Count(_predictedNext.Contains);
            }
            _predictedNext = null;
        }
        if (Predictor is null || Options.Policy != ExpertCachePolicy.Predictive && !Options.PrefetchEnabled)
        {
            return;
        }
        var layers = Spec.Layers;
        var experts = Spec.Experts;
        var tokens = routing.Tokens;
        var k = routing.K;
        var ids = tokenIds ?? Enumerable.Repeat(-1L, tokens).ToArray();
        // P(the batch uses expert e) at each layer, as known now: the next layer from this one's routing, others from the tokens.
        var batch = new double[layers][];
        for (var l = 0; l < layers; l++)
        {
            if (l == layer + 1)
            {
                batch[l] = RoutingPathPredictor.Union(Enumerable.Range(0, tokens).Select(t =>
                    Predictor.Next(layer, routing.Experts.AsSpan(t * k, k), ids[t])), experts);
            }
            else if (l != layer)
            {
                // The next token's batch is unknown: these tokens stand in for it.
                batch[l] = RoutingPathPredictor.Union(ids.Distinct().Select(id => Predictor.ForToken(id, l)), experts);
            }
        }
        var now = needed.ToHashSet();
        Cache.NextUse = id =>
        {
            if (id.Layer == layer && now.Contains(id.Expert))
            {
                return 0;
            }
            var distance = (id.Layer - layer + layers) % layers;
            if (distance == 0) distance = layers;
            var p = Math.Max(batch[id.Layer]?[id.Expert] ?? 0, 1e-6);
            return distance + layers * (1 - p) / p;
        };
        if (!Options.PrefetchEnabled || layer + 1 >= layers)
        {
            return;
        }
        // Only what fits beside this layer's own experts: a prefetch that this layer's demand loads would evict again is a wasted read.
        var room = Cache.Budget.MaxExperts == int.MaxValue ? experts : Math.Max(0, Cache.Budget.MaxExperts - needed.Length);
        if (Cache.Budget.MaxBytes != long.MaxValue)
        {
            var neededBytes = needed.Sum(e => _store.Entry(layer, e).DeviceBytes);
            room = (int)Math.Min(room, Math.Max(0, (Cache.Budget.MaxBytes - neededBytes) / _largestExpertBytes));
        }
        var limit = Math.Min(Options.PrefetchLimit > 0 ? Options.PrefetchLimit : experts, room);
        var next = batch[layer + 1]!;
        var chosen = Enumerable.Range(0, experts).Where(e => next[e] >= Options.PrefetchThreshold)
            .OrderByDescending(e => next[e]).ThenBy(e => e).Take(limit).ToArray();
        lock (_gate)
        {
            _predictedNext = [.. chosen];
            _predicted += chosen.Length;
        }
        foreach (var e in chosen)
        {
            Cache.Prefetch(new ExpertId(layer + 1, e));
        }
    }

    public void Dispose()
    {
        Cache.Dispose();
        foreach (var r in _routers.Values) r.Dispose();
        _routers.Clear();
    }
}
