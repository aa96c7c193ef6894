using System.Net;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;

namespace MoeGrains.Hosting;

/// <summary>How a silo process joins its cluster; bound from the configuration section <c>Cluster</c>.</summary>
public sealed class MoeClusterOptions
{
    public const string SectionName = "Cluster";

    /// <summary><c>localhost</c> (default: development membership held by the primary silo) or <c>redis</c>.</summary>
    public string Clustering { get; set; } = "localhost";

    /// <summary>Redis connection string, for <c>redis</c> clustering (for example <c>127.0.0.1:6379</c>).</summary>
    public string? RedisConnectionString { get; set; }

    public string ClusterId { get; set; } = "moegrains";

    public string ServiceId { get; set; } = "moegrains";

    /// <summary>Silo-to-silo port (default 11111).</summary>
    public int SiloPort { get; set; } = 11111;

    /// <summary>Client gateway port (default 30000).</summary>
    public int GatewayPort { get; set; } = 30000;

    /// <summary>Silo port of the primary silo, for <c>localhost</c> clustering of several processes (default: this silo's).</summary>
    public int? PrimarySiloPort { get; set; }

    /// <summary>Membership probe timeout in milliseconds (Orleans' default 5000; 1000 declares a dead silo in about 17 s).</summary>
    public int? ProbeTimeoutMs { get; set; }

    /// <summary>How long a grain call may take before it fails with a timeout (Orleans' default 30000).</summary>
    public int? ResponseTimeoutMs { get; set; }
}

public static class MoeClusterSiloBuilderExtensions
{
    /// <summary>Joins the cluster the <c>Cluster</c> configuration section describes (localhost or Redis membership).</summary>
    public static ISiloBuilder UseMoeGrainsClustering(this ISiloBuilder builder, MoeClusterOptions? options = null)
    {
        options ??= builder.Configuration.GetSection(MoeClusterOptions.SectionName).Get<MoeClusterOptions>() ?? new MoeClusterOptions();
        switch (options.Clustering.Trim().ToLowerInvariant())
        {
            case "localhost":
                var primary = new IPEndPoint(IPAddress.Loopback, options.PrimarySiloPort ?? options.SiloPort);
                builder.UseLocalhostClustering(options.SiloPort, options.GatewayPort, primary, options.ServiceId, options.ClusterId);
                break;
            case "redis":
                if (string.IsNullOrWhiteSpace(options.RedisConnectionString))
                {
                    throw new InvalidOperationException("Cluster:Clustering is 'redis' but Cluster:RedisConnectionString is empty.");
                }
                builder.Configure<ClusterOptions>(o => { o.ClusterId = options.ClusterId; o.ServiceId = options.ServiceId; });
                builder.ConfigureEndpoints(IPAddress.Loopback, options.SiloPort, options.GatewayPort);
                builder.UseRedisClustering(options.RedisConnectionString);
                break;
            default:
                throw new InvalidOperationException($"Cluster:Clustering must be 'localhost' or 'redis', got '{options.Clustering}'.");
        }
        if (options.ProbeTimeoutMs is { } probe)
        {
            builder.Configure<ClusterMembershipOptions>(o => o.ProbeTimeout = TimeSpan.FromMilliseconds(probe));
        }
        if (options.ResponseTimeoutMs is { } response)
        {
            builder.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMilliseconds(response));
        }
        return builder;
    }
}
