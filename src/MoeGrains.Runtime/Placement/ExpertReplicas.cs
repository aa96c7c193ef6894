using System.Collections.Concurrent;
using MoeGrains.Contracts;

namespace MoeGrains.Placement;

/// <summary>
/// Tokens computed by this silo's expert activations, by grain key (replicas have their own keys): the per-silo expert
/// load, counted, not sampled. One per silo.
/// </summary>
public sealed class ExpertTokenCounts
{
    private readonly ConcurrentDictionary<string, long> _tokens = new(StringComparer.Ordinal);

    public void Add(string key, long tokens) => _tokens.AddOrUpdate(key, tokens, (_, n) => n + tokens);

    /// <summary>The counts of one model's experts (keys starting with <c>model/</c>).</summary>
    public Dictionary<string, long> Snapshot(string model) =>
        _tokens.Where(kv => kv.Key.StartsWith(model + "/", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
}

/// <summary>What applying a replica placement to a running cluster did.</summary>
public sealed record ReplicationReport(int Silos, int Activations, int Replicas, int ExpertsMoved, int ReplicasMoved, double Seconds);

/// <summary>
/// Hot-expert replication on a running cluster (the DeepSeek EPLB idea, applied live): the load each expert gets is read
/// from the routes the cluster records (<see cref="IRoutingTraceGrain"/>), <see cref="ReplicaPlacement.Balance"/> turns
/// it into replicas spread over the silos, and <see cref="ApplyAsync"/> sends the placement to every silo, moves the
/// experts' own grains where it puts replica 0 (as a plan change does) and activates the other replicas on their silos.
/// From then on every layer splits a replicated expert's tokens over its replicas.
/// </summary>
public static class ExpertReplicas
{
    /// <summary>Tokens routed to each expert of <paramref name="layers"/> in the routes the cluster recorded for the model: <c>[layer index][expert]</c>.</summary>
    public static async Task<(double[][] Load, int Tokens)> LiveLoadsAsync(IGrainFactory grains, string model, IReadOnlyList<int> layers, int experts)
    {
        ArgumentNullException.ThrowIfNull(grains);
        var export = await grains.GetGrain<IRoutingTraceGrain>(model).Export();
        var routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes stream");
        return (ReplicaPlacement.Loads(routes, layers, experts), export.Tokens);
    }

    /// <summary>
    /// Applies <paramref name="placement"/> to the running cluster and waits (up to <paramref name="timeout"/>) until every
    /// replica answers from its silo. Requests keep flowing: layers start splitting tokens as soon as their silo has the
    /// placement, a replica activates on its silo at its first call, and moving grains are retried as in
    /// <see cref="ExpertMoves"/>.
    /// </summary>
    public static async Task<ReplicationReport> ApplyAsync(IGrainFactory grains, string model, ReplicaPlacement placement, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(grains);
        ArgumentNullException.ThrowIfNull(placement);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var (hosts, order) = await ExpertMoves.SilosAsync(grains, placement.Silos);
        var message = ReplicaPlacementMessage.From(placement);
        await Task.WhenAll(hosts.Select(h => grains.GetGrain<IPlacementAgentGrain>(h.ToParsableString()).ApplyReplicas(model, message)));
        var limit = timeout ?? TimeSpan.FromSeconds(60);
        var primaries = await ExpertMoves.ApplyAsync(grains, model, placement.Primary(), limit, cancellationToken);
        var replicas = new List<(string Key, string Target)>();
        for (var i = 0; i < placement.Layers.Count; i++)
        {
            for (var e = 0; e < placement.Experts; e++)
            {
                var silos = placement.ReplicaSilos[i * placement.Experts + e];
                for (var r = 1; r < silos.Length; r++) replicas.Add((ExpertKey.Replica(model, placement.Layers[i], e, r), order[silos[r]].Silo));
            }
        }
        var (moved, _) = await ExpertMoves.PlaceAsync(grains, replicas, sw, limit, cancellationToken);
        return new ReplicationReport(hosts.Length, placement.Activations, replicas.Count, primaries.Moved, moved, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Stops replicating (every silo's layers call the experts' own grains only); idle replicas are collected by Orleans.</summary>
    public static async Task RemoveAsync(IGrainFactory grains, string model)
    {
        ArgumentNullException.ThrowIfNull(grains);
        var hosts = (await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Keys;
        await Task.WhenAll(hosts.Select(h => grains.GetGrain<IPlacementAgentGrain>(h.ToParsableString()).RemoveReplicas(model)));
    }

    /// <summary>Tokens the model's experts (all replicas) computed on each active silo so far, by silo address.</summary>
    public static async Task<Dictionary<string, long>> SiloTokensAsync(IGrainFactory grains, string model)
    {
        ArgumentNullException.ThrowIfNull(grains);
        var hosts = (await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Keys.ToArray();
        var counts = await Task.WhenAll(hosts.Select(h => grains.GetGrain<IPlacementAgentGrain>(h.ToParsableString()).ExpertTokens(model)));
        return hosts.Select((h, i) => (Silo: h.ToString(), Tokens: counts[i].Values.Sum())).ToDictionary(x => x.Silo, x => x.Tokens, StringComparer.Ordinal);
    }
}
