using System.Collections.Concurrent;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Placement;
using Orleans.Streams;
using Orleans.Streams.Core;

namespace MoeGrains.Placement
{
    /// <summary>Routing traces from the running layers: sampling, the stream they are exported through.</summary>
    public sealed class RoutingTraceOptions
    {
        /// <summary>
        /// The stream provider routes are published to. Registered by <c>AddRoutingTraces</c> as an implicit-subscription
        /// memory stream provider under this name (so it does not clash with other memory stream providers of the silo).
        /// </summary>
        public const string DEFAULT_STREAM_PROVIDER = "moegrains-routes";

        /// <summary>Share of tokens recorded, 0..1 (by a hash of the token id: every layer and silo samples the same tokens).</summary>
        public double SamplingRate { get; set; } = RoutingTraceRecorder.DEFAULT_SAMPLING_RATE;

        /// <summary>Tokens each recorder keeps at most (per model, per silo and in the collector).</summary>
        public int MaxTokens { get; set; } = RoutingTraceRecorder.DEFAULT_MAX_TOKENS;

        /// <summary>Changes which tokens are sampled; give every silo the same.</summary>
        public ulong Salt { get; set; }

        public string StreamProvider { get; set; } = DEFAULT_STREAM_PROVIDER;
    }

    /// <summary>Sampled routes of one layer step, as published on the routes stream (namespace <see cref="RoutingTraces.StreamNamespace"/>, key = model).</summary>
    [GenerateSerializer, Immutable, Alias("moegrains.RoutingSampleBatch")]
    public sealed record RoutingSampleBatch(
        [property: Id(0)] string Model,
        [property: Id(1)] int Layer,
        [property: Id(2)] int K,
        [property: Id(3)] long[] Tokens,
        [property: Id(4)] int[] Experts,
        [property: Id(5)] float[] Weights)
    {
        /// <summary>The sampled rows' token ids in the model's vocabulary (one per token), or null when the layer step had none.</summary>
        [Id(6)] public long[]? Vocabulary { get; init; }
    }

    /// <summary>The routes recorded for one model, cluster-wide, in both export forms.</summary>
    [GenerateSerializer, Immutable, Alias("moegrains.RoutingTraceExport")]
    public sealed record RoutingTraceExport(
        [property: Id(0)] int Tokens,
        [property: Id(1)] long Dropped,
        [property: Id(2)] string RoutesCsv,
        [property: Id(3)] string CountsCsv);

    /// <summary>
    /// Collects the routes the layers publish for one model (key: model name), through an implicit subscription to the
    /// routes stream, and exports them as per-token routes (<see cref="TokenRouteFile"/> CSV) and cross-layer counts
    /// (<see cref="CrossLayerCountsFile"/> CSV).
    /// </summary>
    [Alias("moegrains.IRoutingTraceGrain")]
    public interface IRoutingTraceGrain : IGrainWithStringKey
    {
        [Alias("export")]
        Task<RoutingTraceExport> Export();

        [Alias("count")]
        Task<int> Count();

        [Alias("clear")]
        Task Clear();
    }

    /// <summary>Names shared by the publisher and the collector.</summary>
    public static class RoutingTraces
    {
        public const string StreamNamespace = "moegrains.routes";

        /// <summary>
        /// Cluster-unique token ids for a decoder session: a 31-bit hash of the session key above the position, so
        /// tokens of different sessions are sampled independently.
        /// </summary>
        public static long TokenId(string session, long position)
        {
            ulong h = 14695981039346656037UL; // FNV-1a
            foreach (var c in session)
            {
                h = (h ^ c) * 1099511628211UL;
            }
            return (long)((h & 0x7FFF_FFFFUL) << 32) | (position & 0xFFFF_FFFFL);
        }
    }

    /// <summary>
    /// This silo's side of routing traces: a recorder per model (what this silo's layers routed) and the sampling rule.
    /// The layer grain publishes what it sampled on the routes stream.
    /// </summary>
    public sealed class RoutingTraceSink(IOptions<RoutingTraceOptions> options)
    {
        private readonly ConcurrentDictionary<string, RoutingTraceRecorder> _recorders = new(StringComparer.Ordinal);

        public RoutingTraceOptions Options => options.Value;

        /// <summary>The routes this silo's layers recorded for a model.</summary>
        public RoutingTraceRecorder Recorder(string model) =>
            _recorders.GetOrAdd(model, _ => new RoutingTraceRecorder(options.Value.SamplingRate, options.Value.MaxTokens, options.Value.Salt));

        /// <summary>
        /// Records a routed batch here and returns the sampled rows to publish, or null when none was sampled.
        /// <paramref name="vocabulary"/>, when given, holds the rows' ids in the model's vocabulary (one per row).
        /// </summary>
        public RoutingSampleBatch? Record(string model, int layer, long[] tokens, RoutingResult routing, long[]? vocabulary = null)
        {
            if (vocabulary is not null && vocabulary.Length != tokens.Length)
            {
                throw new ArgumentException($"{tokens.Length} token ids but {vocabulary.Length} vocabulary ids.", nameof(vocabulary));
            }
            var recorder = Recorder(model);
            var sampled = new List<int>();
            for (var t = 0; t < tokens.Length; t++)
            {
                if (recorder.IsSampled(tokens[t])) sampled.Add(t);
            }
            if (sampled.Count == 0)
            {
                return null;
            }
            var k = routing.K;
            var ids = new long[sampled.Count];
            var vocab = vocabulary is null ? null : new long[sampled.Count];
            var experts = new int[sampled.Count * k];
            var weights = new float[sampled.Count * k];
            for (var i = 0; i < sampled.Count; i++)
            {
                var t = sampled[i];
                ids[i] = tokens[t];
                if (vocab is not null) vocab[i] = vocabulary![t];
                Array.Copy(routing.Experts, t * k, experts, i * k, k);
                Array.Copy(routing.Weights, t * k, weights, i * k, k);
            }
            var batch = new RoutingSampleBatch(model, layer, k, ids, experts, weights) { Vocabulary = vocab };
            Add(recorder, batch);
            return batch;
        }

        /// <summary>
        /// Publishes sampled routes on the routes stream (namespace <see cref="RoutingTraces.StreamNamespace"/>, key =
        /// model) through this silo's provider; call it from a grain's turn.
        /// </summary>
        public Task PublishAsync(IServiceProvider services, RoutingSampleBatch batch)
        {
            ArgumentNullException.ThrowIfNull(services);
            ArgumentNullException.ThrowIfNull(batch);
            return services.GetRequiredKeyedService<IStreamProvider>(Options.StreamProvider)
                .GetStream<RoutingSampleBatch>(StreamId.Create(RoutingTraces.StreamNamespace, batch.Model)).OnNextAsync(batch);
        }

        /// <summary>Adds a published batch to a recorder (unused slots, expert -1, are left out), vocabulary ids included.</summary>
        internal static void Add(RoutingTraceRecorder recorder, RoutingSampleBatch batch)
        {
            var vocabulary = batch.Vocabulary is { } v && v.Length == batch.Tokens.Length ? v : null;
            for (var i = 0; i < batch.Tokens.Length; i++)
            {
                var experts = new List<int>(batch.K);
                var weights = new List<float>(batch.K);
                for (var j = 0; j < batch.K; j++)
                {
                    var e = batch.Experts[i * batch.K + j];
                    if (e < 0) continue;
                    experts.Add(e);
                    weights.Add(batch.Weights[i * batch.K + j]);
                }
                recorder.Record(batch.Tokens[i], batch.Layer, [.. experts], [.. weights], vocabulary?[i] ?? -1);
            }
        }
    }

    [ImplicitStreamSubscription(RoutingTraces.StreamNamespace)]
    internal sealed class RoutingTraceCollectorGrain(IOptions<RoutingTraceOptions> options, Models.ModelCatalog models)
        : Grain, IRoutingTraceGrain, IStreamSubscriptionObserver
    {
        // Everything that arrives was sampled by the layers already: keep it all (up to the bound).
        private readonly RoutingTraceRecorder _recorder = new(1.0, options.Value.MaxTokens);

        public async Task OnSubscribed(IStreamSubscriptionHandleFactory handleFactory)
        {
            var handle = handleFactory.Create<RoutingSampleBatch>();
            await handle.ResumeAsync((batch, _) =>
            {
                RoutingTraceSink.Add(_recorder, batch);
                return Task.CompletedTask;
            });
        }

        public Task<RoutingTraceExport> Export()
        {
            var model = this.GetPrimaryKeyString();
            var routes = _recorder.Routes();
            using var routesCsv = new StringWriter();
            TokenRouteFile.WriteCsv(routesCsv, [.. routes]);
            using var countsCsv = new StringWriter();
            if (routes.Any(r => r.Layers.Count > 1))
            {
                int? experts = null;
                try
                {
                    experts = models.Get(model).Experts;
                }
                catch (MoeGrainsException)
                {
                    // Not served here: the routes tell the expert count.
                }
                var trace = RoutingTrace.FromTokenRoutes(routes, experts);
                var k = routes.SelectMany(r => r.Layers).Max(l => l.Experts.Length);
                CrossLayerCountsFile.Write(countsCsv, trace, model, $"top{k}", "served");
            }
            else
            {
                countsCsv.WriteLine(CrossLayerCountsFile.Header);
            }
            return Task.FromResult(new RoutingTraceExport(routes.Count, _recorder.Dropped, routesCsv.ToString(), countsCsv.ToString()));
        }

        public Task<int> Count() => Task.FromResult(_recorder.Count);

        public Task Clear()
        {
            _recorder.Clear();
            return Task.CompletedTask;
        }
    }
}

namespace MoeGrains.Hosting
{
    /// <summary>Silo set-up for routing traces from the running layers.</summary>
    public static class RoutingTraceSiloBuilderExtensions
    {
        /// <summary>
        /// Records the routes of a sampled share of tokens in every MoE layer step that carries token ids (decoder
        /// sessions do), keeps them per silo (<see cref="RoutingTraceSink"/>) and publishes them on an Orleans memory
        /// stream to <see cref="IRoutingTraceGrain"/> (key: model). The stream provider is registered under
        /// <see cref="RoutingTraceOptions.StreamProvider"/> (default <c>moegrains-routes</c>), implicit subscriptions only
        /// (no pub-sub storage), and only once however often this is called, so it never clashes with another memory stream
        /// provider of the silo. Call it on every silo.
        /// </summary>
        public static ISiloBuilder AddRoutingTraces(this ISiloBuilder builder, Action<RoutingTraceOptions>? configure = null)
        {
            ArgumentNullException.ThrowIfNull(builder);
            var eager = new RoutingTraceOptions();
            configure?.Invoke(eager);
            if (!(eager.SamplingRate is >= 0 and <= 1))
            {
                throw new ArgumentOutOfRangeException(nameof(configure), eager.SamplingRate, "RoutingTraceOptions.SamplingRate must be between 0 and 1.");
            }
            if (eager.MaxTokens < 0 || string.IsNullOrWhiteSpace(eager.StreamProvider))
            {
                throw new ArgumentException("RoutingTraceOptions.MaxTokens must not be negative and StreamProvider must be named.", nameof(configure));
            }
            var options = builder.Services.AddOptions<RoutingTraceOptions>();
            if (configure is not null) options.Configure(configure);
            builder.Services.TryAddSingleton<RoutingTraceSink>();
            var marker = new RoutesStreamRegistered(eager.StreamProvider);
            if (!builder.Services.Any(d => d.ServiceType == typeof(RoutesStreamRegistered) && Equals(d.ImplementationInstance, marker)))
            {
                builder.Services.AddSingleton(marker);
                builder.AddMemoryStreams(eager.StreamProvider, b => b.ConfigureStreamPubSub(StreamPubSubType.ImplicitOnly));
            }
            return builder;
        }
    }

    internal sealed record RoutesStreamRegistered(string Name);
}
