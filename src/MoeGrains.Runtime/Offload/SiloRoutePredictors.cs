using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Placement;

namespace MoeGrains.Offload;

/// <summary>Where a silo's predictor for a model comes from and how much it has seen.</summary>
public sealed record PredictorStatus(string Model, string Source, long Paths, long Skipped, int Refreshes, DateTimeOffset? Updated, string? Error);

/// <summary>
/// A silo's routing-path predictors (<see cref="RoutingPathPredictor"/>), one per model, for expert prefetch under the
/// predictive policy (<c>MoeGrains:Offload</c>). A model listed in <see cref="ExpertOffloadOptions.Predictors"/> gets its
/// predictor from that routes file, loaded once (checked at silo start). Otherwise, when the silo records routing traces
/// (<c>AddRoutingTraces</c>) and <see cref="ExpertOffloadOptions.PredictorRefreshSeconds"/> is above 0, it is rebuilt in
/// the background from the cluster's trace collector (<see cref="IRoutingTraceGrain.Export"/>, the routes with their
/// vocabulary ids) at most that often, as <see cref="Get"/> asks for it; until the collector holds a complete route there
/// is none, and nothing is prefetched. Thread-safe.
/// </summary>
public sealed class SiloRoutePredictors
{
    private readonly ExpertOffloadOptions _options;
    private readonly ModelCatalog _models;
    private readonly IServiceProvider _services;
    private readonly ILogger<SiloRoutePredictors> _logger;
    private readonly TimeProvider _time;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);

    private sealed class Entry
    {
        public RoutingPathPredictor? Predictor;
        public string Source = "none";
        public int Refreshes;
        public DateTimeOffset? Updated;
        public long? LastAttempt; // TimeProvider timestamp
        public bool Busy;
        public bool FileTried;
        public string? Error;
    }

    public SiloRoutePredictors(IOptions<MoeGrainsOptions> options, ModelCatalog models, IServiceProvider services, ILogger<SiloRoutePredictors> logger,
        TimeProvider? time = null)
    {
        _options = options.Value.Offload;
        _models = models;
        _services = services;
        _logger = logger;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>The silo records routing traces (so the collector has routes to refresh from).</summary>
    public bool TracesOn => _tracesOn ??= _services.GetService<RoutingTraceSink>() is not null;

    private bool? _tracesOn;

    /// <summary>
    /// The model's predictor now, or null; starts a background refresh from the trace collector when one is due (see the
    /// class remarks). Never throws for a missing or bad predictor: prefetch is only an optimisation.
    /// </summary>
    public RoutingPathPredictor? Get(string model)
    {
        Entry entry;
        var refresh = false;
        lock (_gate)
        {
            entry = EntryOf(model);
            if (_options.Predictors.TryGetValue(model, out var path))
            {
                if (!entry.FileTried)
                {
                    entry.FileTried = true;
                    try
                    {
                        entry.Predictor = Load(model, path, _models.Get(model));
                        entry.Source = $"file:{path}";
                        entry.Updated = _time.GetUtcNow();
                        entry.Refreshes++;
                    }
                    catch (Exception e) when (e is ArgumentException or MoeGrainsException or IOException)
                    {
                        entry.Error = e.Message;
                        _logger.LogError("No routing-path predictor for model {Model}: {Error}", model, e.Message);
                    }
                }
                return entry.Predictor;
            }
            var every = _options.PredictorRefreshSeconds;
            if (every > 0 && !entry.Busy
                && (entry.LastAttempt is not { } last || _time.GetElapsedTime(last).TotalSeconds >= every) && TracesOn)
            {
                entry.Busy = true;
                entry.LastAttempt = _time.GetTimestamp();
                refresh = true;
            }
        }
        if (refresh)
        {
            // Off the caller's (grain's) turn: the export may take a while on a big trace.
            _ = Task.Run(() => RefreshAsync(model));
        }
        lock (_gate)
        {
            return entry.Predictor;
        }
    }

    /// <summary>
    /// Rebuilds the model's predictor from the cluster's trace collector now (and waits for it); keeps the previous one
    /// when the collector has no complete route yet or the export fails.
    /// </summary>
    public async Task<PredictorStatus> RefreshAsync(string model, CancellationToken cancellationToken = default)
    {
        try
        {
            var spec = _models.Get(model);
            var export = await _services.GetRequiredService<IGrainFactory>().GetGrain<IRoutingTraceGrain>(model).Export().WaitAsync(cancellationToken);
            if (export.Tokens == 0)
            {
                return Status(model); // nothing traced yet
            }
            var routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), $"routes of model '{model}' from the trace collector");
            var predictor = RoutingPathPredictor.FromTokenRoutes(routes, spec.Layers, spec.Experts, spec.TopK);
            lock (_gate)
            {
                var entry = EntryOf(model);
                if (predictor.Observed > 0)
                {
                    entry.Predictor = predictor;
                    entry.Source = "traces";
                    entry.Updated = _time.GetUtcNow();
                    entry.Refreshes++;
                    entry.Error = null;
                }
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            lock (_gate)
            {
                EntryOf(model).Error = e.Message;
            }
            _logger.LogWarning("The routing-path predictor of model {Model} was not refreshed from the traces: {Error}", model, e.Message);
        }
        finally
        {
            lock (_gate)
            {
                EntryOf(model).Busy = false;
            }
        }
        return Status(model);
    }

    /// <summary>Uses <paramref name="predictor"/> for <paramref name="model"/> (a bench or a test; replaced by the next refresh from the traces).</summary>
    public void Set(string model, RoutingPathPredictor predictor, string source = "set")
    {
        ArgumentNullException.ThrowIfNull(predictor);
        var spec = _models.Get(model);
        if (predictor.Layers != spec.Layers || predictor.Experts != spec.Experts)
        {
            throw new ArgumentException($"The predictor covers {predictor.Layers} layers x {predictor.Experts} experts, model '{model}' {spec.Layers} x {spec.Experts}.", nameof(predictor));
        }
        lock (_gate)
        {
            var entry = EntryOf(model);
            entry.Predictor = predictor;
            entry.Source = source;
            entry.Updated = _time.GetUtcNow();
            entry.Refreshes++;
            entry.Error = null;
        }
    }

    public PredictorStatus Status(string model)
    {
        lock (_gate)
        {
            var e = EntryOf(model);
            return new PredictorStatus(model, e.Source, e.Predictor?.Observed ?? 0, e.Predictor?.Skipped ?? 0, e.Refreshes, e.Updated, e.Error);
        }
    }

    /// <summary>Routing paths behind every predictor of this silo.</summary>
    public long TotalPaths
    {
        get
        {
            lock (_gate)
            {
                return _entries.Values.Sum(e => e.Predictor?.Observed ?? 0);
            }
        }
    }

    private Entry EntryOf(string model)
    {
        if (!_entries.TryGetValue(model, out var entry))
        {
            _entries[model] = entry = new Entry();
        }
        return entry;
    }

    /// <summary>
    /// A predictor from a routes file for <paramref name="spec"/>: the file must parse and hold at least one token traced
    /// at every layer, with layers and experts the model has. Errors name the setting, the file and what is wrong.
    /// </summary>
    public static RoutingPathPredictor Load(string model, string path, ModelSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var setting = $"MoeGrains:Offload:Predictors:{model}";
        IReadOnlyList<TokenRoute> routes;
        try
        {
            routes = TokenRouteFile.Read(path);
        }
        catch (RoutingTraceFormatException e)
        {
            throw new ArgumentException($"{setting}: {e.Message}", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{setting}: the routes file '{path}' cannot be read: {e.Message}", e);
        }
        RoutingPathPredictor predictor;
        try
        {
            predictor = RoutingPathPredictor.FromTokenRoutes(routes, spec.Layers, spec.Experts, spec.TopK);
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"{setting} ({path}): {e.Message}", e);
        }
        if (predictor.Observed == 0)
        {
            throw new ArgumentException($"{setting} ({path}): no token is traced at every one of the model's {spec.Layers} layers ({predictor.Skipped} incomplete routes).");
        }
        return predictor;
    }

    /// <summary>
    /// The experts of layer <paramref name="layer"/> + 1 worth prefetching once <paramref name="layer"/> has routed:
    /// P(the batch uses e) = the union over its tokens of <see cref="RoutingPathPredictor.Next"/> (each token's experts
    /// now and its vocabulary id, when known); those at or above <paramref name="threshold"/>, most likely first, at most
    /// <paramref name="room"/>. Empty at the last layer.
    /// </summary>
    public static (int Expert, double Probability)[] NextLayer(RoutingPathPredictor predictor, int layer, RoutingResult routing, long[]? vocabulary,
        double threshold, int room)
    {
        ArgumentNullException.ThrowIfNull(predictor);
        ArgumentNullException.ThrowIfNull(routing);
        if (room <= 0 || layer + 1 >= predictor.Layers || routing.Tokens == 0)
        {
            return [];
        }
        var k = routing.K;
        var perToken = new List<double[]>(routing.Tokens);
        for (var t = 0; t < routing.Tokens; t++)
        {
            var token = vocabulary is not null && vocabulary.Length == routing.Tokens ? vocabulary[t] : -1;
            perToken.Add(predictor.Next(layer, routing.Experts.AsSpan(t * k, k), token));
        }
        var next = RoutingPathPredictor.Union(perToken, predictor.Experts);
        return [.. Enumerable.Range(0, predictor.Experts).Where(e => next[e] >= threshold)
            .OrderByDescending(e => next[e]).ThenBy(e => e).Take(room).Select(e => (e, next[e]))];
    }
}
