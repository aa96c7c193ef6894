using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Security;
using static TorchSharp.torch;

namespace MoeGrains.Client;

/// <summary>How a client reaches a cluster.</summary>
public sealed class MoeClientOptions
{
    /// <summary>Gateway port of a localhost cluster (default 30000), used when <see cref="RedisConnectionString"/> is empty.</summary>
    public int GatewayPort { get; set; } = 30000;

    /// <summary>Redis membership connection string (for clusters that use Redis clustering).</summary>
    public string? RedisConnectionString { get; set; }

    public string ClusterId { get; set; } = "moegrains";

    public string ServiceId { get; set; } = "moegrains";

    /// <summary>How long a call may take before it fails with a timeout (Orleans' default 30000 ms).</summary>
    public int? ResponseTimeoutMs { get; set; }

    /// <summary>Mutual TLS towards the gateways (off unless <see cref="Security.MoeTlsOptions.Enabled"/>).</summary>
    public Security.MoeTlsOptions? Tls { get; set; }

    /// <summary>Largest tensor sent, in bytes: bigger ones are refused before they are sent.</summary>
    public long MaxTensorBytes { get; set; } = TensorValidation.DEFAULT_MAX_BYTES;
}

/// <summary>
/// The client API: run MoE layers and ask about the cluster, either connected to a running cluster
/// (<see cref="ConnectAsync"/>) or through a silo hosted in this process (<see cref="StartEmbeddedAsync"/>).
/// </summary>
public sealed class MoeClient : IAsyncDisposable
{
    private readonly IHost? _host;
    private readonly LocalCluster? _cluster;
    private readonly long _maxTensorBytes;

    private readonly IClusterClient _client;

    private MoeClient(IClusterClient client, long maxTensorBytes, IHost? host, LocalCluster? cluster)
    {
        _client = client;
        Grains = client;
        _maxTensorBytes = maxTensorBytes;
        _host = host;
        _cluster = cluster;
    }

    public IGrainFactory Grains { get; }

    /// <summary>Connects to a running cluster as an external client.</summary>
    public static async Task<MoeClient> ConnectAsync(MoeClientOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.UseOrleansClient(client =>
        {
            if (string.IsNullOrWhiteSpace(options.RedisConnectionString))
            {
                client.UseLocalhostClustering(options.GatewayPort, options.ServiceId, options.ClusterId);
            }
            else
            {
                client.Configure<Orleans.Configuration.ClusterOptions>(o => { o.ClusterId = options.ClusterId; o.ServiceId = options.ServiceId; });
                client.UseRedisClustering(options.RedisConnectionString);
            }
            client.Services.Configure<TensorWireOptions>(o => o.MaxTensorBytes = options.MaxTensorBytes);
            client.AddMemoryStreams(GenerationStreams.ProviderName, streams => streams.ConfigurePartitioning(GenerationStreams.QUEUES));
            if (options.Tls is { Enabled: true } tls)
            {
                client.UseMoeGrainsTls(tls);
            }
            if (options.ResponseTimeoutMs is { } timeout)
            {
                client.Configure<Orleans.Configuration.ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMilliseconds(timeout));
            }
        });
        var host = builder.Build();
        await host.StartAsync(cancellationToken).ConfigureAwait(false);
        return new MoeClient(host.Services.GetRequiredService<IClusterClient>(), options.MaxTensorBytes, host, null);
    }

    /// <summary>Starts <paramref name="silos"/> silos in this process and talks to them through the first.</summary>
    public static async Task<MoeClient> StartEmbeddedAsync(int silos, Action<int, ISiloBuilder> configure, CancellationToken cancellationToken = default)
    {
        var cluster = await LocalCluster.StartAsync(silos, configure, cancellationToken: cancellationToken).ConfigureAwait(false);
        return new MoeClient(cluster.Silos[0].Services.GetRequiredService<IClusterClient>(), TensorValidation.DEFAULT_MAX_BYTES, null, cluster);
    }

    /// <summary>Runs one MoE layer of <paramref name="model"/> on <paramref name="hidden"/> <c>[tokens, d_model]</c>.</summary>
    public Task<MoeLayerResult> ForwardLayerAsync(string model, int layer, Tensor hidden, TensorDType wireType = TensorDType.Float32,
        Func<MoeLayerRequest, MoeLayerRequest>? shape = null, CancellationToken cancellationToken = default)
    {
        var request = new MoeLayerRequest(WireTensor.FromTensor(hidden, wireType, _maxTensorBytes));
        return ForwardLayerAsync(model, layer, shape is null ? request : shape(request), cancellationToken);
    }

    public Task<MoeLayerResult> ForwardLayerAsync(string model, int layer, MoeLayerRequest request, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Hidden.Data.Length > _maxTensorBytes)
        {
            throw new PayloadTooLargeException(request.Hidden.Data.Length, _maxTensorBytes);
        }
        return Grains.GetGrain<IMoeLayerGrain>(ExpertKey.Layer(model, layer)).Forward(request, cancellationToken);
    }

    /// <summary>
    /// Continues <paramref name="prompt"/> (token ids of the model's tokenizer) with the served language model
    /// <paramref name="model"/>: a new decoder session grain generates and publishes each token on an Orleans stream as
    /// it is chosen; the events arrive here in order, sequence numbers from 0, and the end marker (with its reason) comes
    /// last. The request is checked (<see cref="GenerationRequestValidator"/>) before anything is sent; the model, the
    /// router and the context are checked by the grain. <paramref name="started"/>, when given, is told where the session
    /// runs before the first event.
    /// </summary>
    public IAsyncEnumerable<GenerationEvent> GenerateAsync(string model, int[] prompt, GenerationOptions options, string? router = null,
        CancellationToken cancellationToken = default, Action<GenerationStarted>? started = null) =>
        GenerationStreams.GenerateAsync(_client, model, prompt, options, router, cancellationToken, started);

    public Task<SiloDeviceInfo[]> SilosAsync() => Grains.GetGrain<IClusterInfoGrain>(0).Silos();

    public Task<ModelInfo> ModelAsync(string model) => Grains.GetGrain<IClusterInfoGrain>(0).Model(model);

    public Task<ExpertInfo> DescribeExpertAsync(string model, int layer, int expert) =>
        Grains.GetGrain<IExpertGrain>(ExpertKey.Expert(model, layer, expert)).Describe();

    public async ValueTask DisposeAsync()
    {
        if (_host is not null)
        {
            await _host.StopAsync().ConfigureAwait(false);
            _host.Dispose();
        }
        if (_cluster is not null)
        {
            await _cluster.DisposeAsync().ConfigureAwait(false);
        }
    }
}
