using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Plugins;

namespace MoeGrains.Offload;

/// <summary>
/// Experts that do not fit, for a silo (<c>MoeGrains:Offload</c>): a device budget for the expert weights of the silo's
/// expert grains. Off (0 and 0, the default) keeps every expert resident, as without this section.
/// </summary>
public sealed class ExpertOffloadOptions
{
    /// <summary>Most experts resident on this silo's device at once (0: no limit by count).</summary>
    public int DeviceBudgetExperts { get; set; }

    /// <summary>Most expert weight bytes (float32, as computed) resident on this silo's device at once (0: no limit by bytes).</summary>
    public long DeviceBudgetBytes { get; set; }

    /// <summary>
    /// Blocks whose attention weights stay on the device for the silo's decoder sessions (0, the default: all). Below the
    /// model's block count the others wait in host memory and are made on the device when their block runs (layer-wise
    /// streaming of the shared backbone, <see cref="Generation.BackboneOptions"/>).
    /// </summary>
    public int ResidentAttentionLayers { get; set; }

    /// <summary>
    /// What a full cache evicts: <c>lru</c>, <c>lfu</c> or <c>predictive</c> (expected next use from the layer order, each
    /// expert's observed frequency and the prefetch hints of a routing-path predictor; with a predictor, it also prefetches).
    /// </summary>
    public string Policy { get; set; } = "lru";

    /// <summary>
    /// Expert weight stores (model → folder with a <c>store.json</c>, see <see cref="ExpertWeightStore"/>). A model without one
    /// gets a float32 store written from its checkpoint under <see cref="StoreRoot"/> on first use.
    /// </summary>
    public Dictionary<string, string> Stores { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Where stores written from checkpoints go (default: a folder of this process under the temporary folder).</summary>
    public string? StoreRoot { get; set; }

    /// <summary>
    /// With the predictive policy and a routing-path predictor for the model: once a layer has routed, hint the next
    /// layer's likely experts to their grains, whose silos read them into the cache while the layer computes (default on).
    /// </summary>
    public bool Prefetch { get; set; } = true;

    /// <summary>Least predicted probability (that the batch uses an expert at the next layer) for a prefetch hint.</summary>
    public double PrefetchThreshold { get; set; } = 0.25;

    /// <summary>
    /// Routing-path predictors from routes files (model → a <c>TokenRouteFile</c> CSV or JSON lines, such as the routes
    /// export of the cluster's trace collector; with a <c>vocab</c> column the predictor knows tokens), loaded once.
    /// A model listed here is not refreshed from the traces.
    /// </summary>
    public Dictionary<string, string> Predictors { get; set; } = new(StringComparer.Ordinal);

    /// <summary>
    /// When routing traces are on (<c>AddRoutingTraces</c>), a model without a predictor file gets its predictor from the
    /// cluster's trace collector (<c>IRoutingTraceGrain.Export</c>), rebuilt at most this often, in seconds (0: never).
    /// </summary>
    public double PredictorRefreshSeconds { get; set; } = 30;

    public bool Enabled => DeviceBudgetExperts > 0 || DeviceBudgetBytes > 0;

    public ExpertCachePolicy CachePolicy => Policy.Trim().ToLowerInvariant() switch
    {
        "lru" => ExpertCachePolicy.Lru,
        "lfu" => ExpertCachePolicy.Lfu,
        "predictive" => ExpertCachePolicy.Predictive,
        _ => throw new ArgumentException($"MoeGrains:Offload:Policy must be lru, lfu or predictive, got '{Policy}'."),
    };

    public ExpertCacheBudget Budget => new(
        DeviceBudgetExperts > 0 ? DeviceBudgetExperts : int.MaxValue,
        DeviceBudgetBytes > 0 ? DeviceBudgetBytes : long.MaxValue);

    /// <summary>What is wrong with these options (empty when valid).</summary>
    public IEnumerable<string> Errors()
    {
        if (DeviceBudgetExperts < 0) yield return $"MoeGrains:Offload:DeviceBudgetExperts must not be negative, got {DeviceBudgetExperts}.";
        if (DeviceBudgetBytes < 0) yield return $"MoeGrains:Offload:DeviceBudgetBytes must not be negative, got {DeviceBudgetBytes}.";
        if (ResidentAttentionLayers < 0) yield return $"MoeGrains:Offload:ResidentAttentionLayers must not be negative, got {ResidentAttentionLayers}.";
        if (Policy.Trim().ToLowerInvariant() is not ("lru" or "lfu" or "predictive"))
        {
            yield return $"MoeGrains:Offload:Policy must be lru, lfu or predictive, got '{Policy}'.";
        }
        foreach (var (model, folder) in Stores)
        {
            if (!File.Exists(Path.Combine(folder, ExpertWeightStore.ManifestFile)))
            {
                yield return $"MoeGrains:Offload:Stores: the store of model '{model}' ({folder}) has no {ExpertWeightStore.ManifestFile}.";
            }
        }
        if (!(PrefetchThreshold is > 0 and <= 1))
        {
            yield return $"MoeGrains:Offload:PrefetchThreshold must be in (0, 1], got {PrefetchThreshold}.";
        }
        if (!(PredictorRefreshSeconds >= 0) || double.IsInfinity(PredictorRefreshSeconds))
        {
            yield return $"MoeGrains:Offload:PredictorRefreshSeconds must be 0 (off) or a positive number of seconds, got {PredictorRefreshSeconds}.";
        }
        foreach (var (model, path) in Predictors)
        {
            if (string.IsNullOrWhiteSpace(path) || !File.Exists(path))
            {
                yield return $"MoeGrains:Offload:Predictors:{model}: the routes file '{path}' does not exist.";
            }
        }
    }
}

/// <summary>An expert lent by the silo's cache to one computation: pinned (not evicted) until disposed.</summary>
public sealed class SiloExpertLease(IDisposable lease, IExpert expert, ModelSpec spec) : IDisposable
{
    public IExpert Expert { get; } = expert;

    public ModelSpec Spec { get; } = spec;

    public void Dispose() => lease.Dispose();
}

/// <summary>
/// One silo's expert weights on its device under the budget of <see cref="ExpertOffloadOptions"/>, shared by all the
/// silo's expert grains: a grain acquires its expert for each computation (on the device lane's thread); a resident
/// expert is used as it is, another one is read from the model's <see cref="ExpertWeightStore"/> (checked, dequantised)
/// and made into the plugin, evicting others by the policy. Figures: <see cref="Report"/>, and the <c>moegrains.offload.*</c>
/// instruments of the MoeGrains meter (the silo's /metrics).
/// </summary>
public sealed class SiloExpertCache : IDisposable
{
    private readonly ExpertOffloadOptions _options;
    private readonly ModelCatalog _models;
    private readonly PluginCatalog _plugins;
    private readonly SiloDevice _device;
    private readonly IServiceProvider _services;
    private readonly ILogger<SiloExpertCache> _logger;
    private readonly Dictionary<string, ExpertWeightStore> _stores = new(StringComparer.Ordinal);
    private readonly Dictionary<ExpertId, long> _uses = [];
    private readonly Dictionary<(string Model, int Layer), long> _mostUses = []; // the most uses of any expert of the layer
    private readonly Dictionary<string, int> _lastLayer = new(StringComparer.Ordinal);
    private readonly Dictionary<(string Model, int Layer), Dictionary<int, double>> _hinted = []; // per layer, prefetch hints not yet used: expert -> P(used next step)
    private readonly Dictionary<(string Model, int Layer), HashSet<int>> _running = [];  // experts of a running layer step, not yet acquired
    private readonly Lock _gate = new();
    private readonly string _root;
    private long _hintsSent, _hintsReceived;

    public SiloExpertCache(IOptions<MoeGrainsOptions> options, ModelCatalog models, PluginCatalog plugins, SiloDevice device,
        IServiceProvider services, ILogger<SiloExpertCache> logger)
    {
        _options = options.Value.Offload;
        _models = models;
        _plugins = plugins;
        _device = device;
        _services = services;
        _logger = logger;
        _root = _options.StoreRoot ?? Path.Combine(Path.GetTempPath(), "moegrains-stores", $"{Environment.ProcessId}-{Guid.NewGuid():N}"[..20]);
        if (Enabled)
        {
            Cache = new DeviceExpertCache<OffloadedMoeModel.ResidentExpert>(_options.Budget, _options.CachePolicy, DeviceBytes, Load);
            if (_options.CachePolicy == ExpertCachePolicy.Predictive)
            {
                Cache.NextUse = NextUse;
            }
        }
    }

    public bool Enabled => _options.Enabled;

    /// <summary>
    /// This silo sends and takes prefetch hints: a budget, the predictive policy and <see cref="ExpertOffloadOptions.Prefetch"/>.
    /// </summary>
    public bool PrefetchEnabled => Cache is not null && _options.CachePolicy == ExpertCachePolicy.Predictive && _options.Prefetch;

    /// <summary>Least predicted probability for a prefetch hint.</summary>
    public double PrefetchThreshold => _options.PrefetchThreshold;

    /// <summary>The silo's routing-path predictors (for the prefetch hints its layer grains send; resolved on first use).</summary>
    public SiloRoutePredictors Predictors => _predictors ??= _services.GetRequiredService<SiloRoutePredictors>();

    private SiloRoutePredictors? _predictors;

    /// <summary>The cache (null when offloading is off).</summary>
    public DeviceExpertCache<OffloadedMoeModel.ResidentExpert>? Cache { get; }

    /// <summary>The model's expert store: the configured one, or one written from its checkpoint on first use.</summary>
    public ExpertWeightStore Store(string model)
    {
        lock (_gate)
        {
            if (_stores.TryGetValue(model, out var store))
            {
                return store;
            }
            var spec = _models.Get(model);
            if (_options.Stores.TryGetValue(model, out var folder))
            {
                store = ExpertWeightStore.Open(folder);
            }
            else
            {
                folder = Path.Combine(_root, model);
                store = ExpertWeightStore.Write(_models.File(model), spec, folder);
                _logger.LogInformation("Expert store of model {Model} written to {Folder}", model, folder);
            }
            if (store.Spec.Layers != spec.Layers || store.Spec.Experts != spec.Experts || store.Spec.DModel != spec.DModel)
            {
                throw new CheckpointException($"The expert store of model '{model}' ({store.Folder}) has {store.Spec.Layers} layers x {store.Spec.Experts} experts of width {store.Spec.DModel}; the model {spec.Layers} x {spec.Experts} of width {spec.DModel}.");
            }
            _options.Budget.Validate(store.Entries.Max(e => e.DeviceBytes));
            _stores[model] = store;
            return store;
        }
    }

    /// <summary>
    /// The expert of <paramref name="key"/> (<c>model/layer/expert</c>), pinned until the lease is disposed; loaded from the
    /// store when it is not resident. Call on the device lane's thread: the plugin's tensors are made there.
    /// </summary>
    public SiloExpertLease Acquire(string key, CancellationToken cancellationToken = default)
    {
        var cache = Cache ?? throw new InvalidOperationException("Offloading is off on this silo (no MoeGrains:Offload budget).");
        var (model, layer, index) = ExpertKey.ParseExpert(key);
        var spec = _models.Check(model, layer, index);
        var store = StoreOrFail(key, model);
        var id = new ExpertId(layer, index, model);
        lock (_gate)
        {
            var uses = _uses[id] = _uses.GetValueOrDefault(id) + 1;
            if (uses > _mostUses.GetValueOrDefault((model, layer))) _mostUses[(model, layer)] = uses;
            _lastLayer[model] = layer;
            if (_hinted.TryGetValue((model, layer), out var hints)) hints.Remove(index);
            if (_running.TryGetValue((model, layer), out var running))
            {
                running.Remove(index);
            }
            // The previous layer's step is over once this layer runs: its hints that were not used, and its experts that
            // were not needed here after all, are forgotten.
            var layers = spec.Layers;
            var previous = (layer - 1 + layers) % layers;
            _running.Remove((model, previous));
            _hinted.Remove((model, previous));
        }
        var lease = cache.Acquire(id, cancellationToken);
        try
        {
            var expert = lease.Value.Get(host => OffloadedMoeModel.CreateExpert(_plugins, store.Spec, id, host, _device.Device, _services));
            return new SiloExpertLease(lease, expert, spec);
        }
        catch (Exception e) when (e is not MoeGrainsException)
        {
            lease.Dispose();
            throw new ExpertFailedException($"Expert '{key}' could not be made from its stored weights: {e.Message}");
        }
    }

    /// <summary>Notes that a layer step sent no hints because making them failed (logged at debug level).</summary>
    public void HintsDropped(string model, int layer, Exception error) =>
        _logger.LogDebug("No prefetch hints after layer {Layer} of model {Model}: {Error}", layer, model, error.Message);

    /// <summary>
    /// A prefetch hint for the expert of <paramref name="key"/> (<c>model/layer/expert[/replica]</c>): notes that the layer
    /// step of the hint is running (its experts are needed now, the hinted one next, with the hint's probability) and asks
    /// the cache to read the expert's weights into host memory in the background, if the policy judges it worth what it
    /// would evict. Returns whether a read was started. Never throws: a hint that cannot be followed is dropped.
    /// </summary>
    public bool Prefetch(string key, ExpertPrefetchHint hint)
    {
        ArgumentNullException.ThrowIfNull(hint);
        if (!PrefetchEnabled)
        {
            return false;
        }
        try
        {
            var (model, layer, index) = ExpertKey.ParseExpert(key);
            var spec = _models.Check(model, layer, index);
            StoreOrFail(key, model);
            var id = new ExpertId(layer, index, model);
            lock (_gate)
            {
                _hintsReceived++;
                if (!_hinted.TryGetValue((model, layer), out var hints)) _hinted[(model, layer)] = hints = [];
                hints[index] = Math.Clamp(hint.Probability, 0, 1);
                // A hint that arrives once the next layer has begun here is late: it must not move the running step back.
                if ((uint)hint.RunningLayer < (uint)spec.Layers && _lastLayer.GetValueOrDefault(model, -1) != (hint.RunningLayer + 1) % spec.Layers)
                {
                    _lastLayer[model] = hint.RunningLayer;
                    _running[(model, hint.RunningLayer)] = [.. (hint.RunningExperts ?? []).Where(e => (uint)e < (uint)spec.Experts)];
                }
            }
            return Cache!.Prefetch(id);
        }
        catch (Exception e) when (e is MoeGrainsException or ArgumentException or InvalidOperationException or IOException)
        {
            _logger.LogDebug("Prefetch hint for {Key} dropped: {Error}", key, e.Message);
            return false;
        }
    }

    /// <summary>Counts prefetch hints this silo's layer grains sent.</summary>
    public void CountHintsSent(int hints)
    {
        lock (_gate)
        {
            _hintsSent += hints;
        }
    }

    /// <summary>
    /// How many of the next layer's experts a layer step may prefetch (as <see cref="OffloadedMoeModel"/> does in process):
    /// what the budget holds beside the experts the step needs now, since a prefetch that the step's own loads evict again
    /// is a wasted read. The budget is this silo's; the experts may live on several silos, so it is a cautious bound.
    /// </summary>
    public int PrefetchRoom(string model, int layer, IReadOnlyCollection<int> needed)
    {
        if (Cache is not { } cache)
        {
            return 0;
        }
        var spec = _models.Get(model);
        var room = cache.Budget.MaxExperts == int.MaxValue ? spec.Experts : Math.Max(0, cache.Budget.MaxExperts - needed.Count);
        if (cache.Budget.MaxBytes != long.MaxValue)
        {
            var store = Store(model);
            var neededBytes = needed.Sum(e => store.Entry(layer, e).DeviceBytes);
            var largest = store.Entries.Max(e => e.DeviceBytes);
            room = (int)Math.Min(room, Math.Max(0, (cache.Budget.MaxBytes - neededBytes) / largest));
        }
        return Math.Min(room, spec.Experts);
    }

    private ExpertWeightStore StoreOrFail(string key, string model)
    {
        try
        {
            return Store(model);
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new ExpertFailedException($"Expert '{key}': the device budget cannot hold it ({e.Message}).");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"Expert '{key}': the expert store of model '{model}' cannot be written or read: {e.Message}");
        }
    }

    private long DeviceBytes(ExpertId id) => Store(id.Model!).Entry(id.Layer, id.Expert).DeviceBytes;

    private (OffloadedMoeModel.ResidentExpert, long) Load(ExpertId id)
    {
        var host = Store(id.Model!).ReadHost(id.Layer, id.Expert);
        return (new OffloadedMoeModel.ResidentExpert(host), host.BytesRead);
    }

    // Predictive eviction in a silo, which sees expert calls (and prefetch hints) but not the tokens' routes: the experts of
    // a running layer step that it has not used yet are needed now; the layers after the one running come sooner (layer
    // order), and within a layer the experts used more often so far, or hinted as likely next, are more likely to be needed.
    private double NextUse(ExpertId id)
    {
        lock (_gate)
        {
            if (_running.TryGetValue((id.Model!, id.Layer), out var running) && running.Contains(id.Expert))
            {
                return 0;
            }
            var layers = _models.Get(id.Model!).Layers;
            var last = _lastLayer.GetValueOrDefault(id.Model!);
            var distance = (id.Layer - last + layers) % layers;
            if (distance == 0) distance = layers;
            var most = Math.Max(1, _mostUses.GetValueOrDefault((id.Model!, id.Layer)));
            var p = Math.Max(Math.Max((double)_uses.GetValueOrDefault(id) / most, _hinted.GetValueOrDefault((id.Model!, id.Layer))?.GetValueOrDefault(id.Expert) ?? 0), 1e-3);
            return distance + layers * (1 - p) / p;
        }
    }

    /// <summary>This silo's figures.</summary>
    public OffloadCacheReport Report(string silo)
    {
        if (Cache is null)
        {
            return new OffloadCacheReport(silo, false, "off", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
        }
        var s = Cache.Stats();
        long sent, received;
        lock (_gate)
        {
            (sent, received) = (_hintsSent, _hintsReceived);
        }
        return new OffloadCacheReport(silo, true, _options.Policy.Trim().ToLowerInvariant(), _options.DeviceBudgetExperts, _options.DeviceBudgetBytes,
            s.Accesses, s.Hits, s.Loads, s.Evictions, s.BytesRead, s.ResidentExperts, s.ResidentBytes, s.PeakResidentExperts, s.PeakResidentBytes, Math.Round(s.StallMs, 3))
        {
            PrefetchHintsSent = sent,
            PrefetchHintsReceived = received,
            Prefetches = s.Prefetches,
            PrefetchesUsed = s.PrefetchesUsed,
            DemandLoads = s.DemandLoads,
            PredictorPaths = Predictors.TotalPaths,
        };
    }

    public void Dispose() => Cache?.Dispose();
}
