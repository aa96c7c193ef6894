using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace MoeGrains.Hosting;

/// <summary>
/// Several real silos in this process on loopback (each its own host, ports and services), joined through localhost
/// clustering with the first silo as primary; started once every silo is an active member. Used by <c>moe serve</c>, <c>moe demo</c>, benchmarks and tests.
/// </summary>
public sealed class LocalCluster : IAsyncDisposable
{
    private readonly List<IHost> _silos = [];

    private LocalCluster(string clusterId) => ClusterId = clusterId;

    public string ClusterId { get; }

    public IReadOnlyList<IHost> Silos => _silos;

    /// <summary>The gateway port of the first silo (clients connect here).</summary>
    public int GatewayPort { get; private set; }

    /// <summary>Grain factory of the first silo: calls made through it start on that silo.</summary>
    public IGrainFactory GrainFactory => _silos[0].Services.GetRequiredService<IGrainFactory>();

    /// <summary>Starts <paramref name="count"/> silos; <paramref name="configure"/> runs for each (index given).</summary>
    /// <param name="basePorts">Silo and gateway port of the first silo (the next silos take the following ones); free ports when null.</param>
    public static async Task<LocalCluster> StartAsync(int count, Action<int, ISiloBuilder> configure, LogLevel logLevel = LogLevel.Warning,
        (int Silo, int Gateway)? basePorts = null, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        var cluster = new LocalCluster(basePorts is null ? $"moegrains-{Guid.NewGuid():N}"[..20] : "moegrains");
        var ports = basePorts is { } b
            ? Enumerable.Range(0, count).SelectMany(i => new[] { b.Silo + i, b.Gateway + i }).ToArray()
            : FreePorts(count * 2);
        var primary = new IPEndPoint(IPAddress.Loopback, ports[0]);
        cluster.GatewayPort = ports[1];
        try
        {
            for (var i = 0; i < count; i++)
            {
                var index = i;
                var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
                builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(logLevel)
                    .AddFilter("Orleans.Runtime.Silo", LogLevel.Error) // the ServerGC advice is noise for embedded silos
                    .AddFilter("Orleans.Runtime.Watchdog", LogLevel.Error) // so are CPU-starvation notes on a shared 2-core VM
                    // and token-stream queue reads that time out on such a machine: they are retried, and consumers fill gaps from the grain
                    .AddFilter("Orleans.Providers.MemoryAdapterReceiver", LogLevel.Critical)
                    .AddFilter("Orleans.Streams." + Generation.GenerationStreams.ProviderName, LogLevel.Critical);
                builder.Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
                builder.UseOrleans(silo =>
                {
                    silo.UseLocalhostClustering(ports[2 * index], ports[2 * index + 1], primary, serviceId: "moegrains", clusterId: cluster.ClusterId);
                    configure(index, silo);
                });
                var host = builder.Build();
                cluster._silos.Add(host);
                await host.StartAsync(cancellationToken).ConfigureAwait(false);
            }
            await cluster.WaitForMembersAsync(TimeSpan.FromSeconds(60), cancellationToken).ConfigureAwait(false);
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    // A silo that has started may not yet be an active member: placement would ignore it. Returns once the membership
    // table lists every silo of this cluster as active.
    private async Task WaitForMembersAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        var management = GrainFactory.GetGrain<IManagementGrain>(0);
        var deadline = DateTime.UtcNow + timeout;
        int active;
        while ((active = (await management.GetHosts(onlyActive: true).ConfigureAwait(false)).Count) < _silos.Count)
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"{active} of the {_silos.Count} silos of local cluster {ClusterId} are active members after {timeout.TotalSeconds:F0} s.");
            }
            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Asks the OS for free loopback ports.</summary>
    public static int[] FreePorts(int count)
    {
        var listeners = new List<TcpListener>();
        try
        {
            for (var i = 0; i < count; i++)
            {
                var l = new TcpListener(IPAddress.Loopback, 0);
                l.Start();
                listeners.Add(l);
            }
            return listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port).ToArray();
        }
        finally
        {
            foreach (var l in listeners) l.Stop();
        }
    }

    public async ValueTask DisposeAsync()
    {
        for (var i = _silos.Count - 1; i >= 0; i--)
        {
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(15));
                await _silos[i].StopAsync(cts.Token).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // Shutting down: a silo that cannot stop cleanly is disposed anyway.
            }
            _silos[i].Dispose();
        }
        _silos.Clear();
    }
}
