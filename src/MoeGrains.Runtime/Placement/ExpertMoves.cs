using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Contracts;
using Orleans.Core.Internal;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace MoeGrains.Placement;

/// <summary>A placement plan as a message.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.PlacementPlanMessage")]
public sealed record PlacementPlanMessage(
    [property: Id(0)] int[] Layers,
    [property: Id(1)] int Experts,
    [property: Id(2)] int Silos,
    [property: Id(3)] int[] Assignment)
{
    public static PlacementPlanMessage From(PlacementPlan plan) => new([.. plan.Layers], plan.Experts, plan.Silos, [.. plan.Assignment]);

    public PlacementPlan ToPlan() => new(Layers, Experts, Silos, Assignment);
}

/// <summary>One per silo (key: the silo's parsable address): changes that silo's copy of the placement plans.</summary>
[Alias("moegrains.IPlacementAgentGrain")]
public interface IPlacementAgentGrain : IGrainWithStringKey
{
    /// <summary>Sets the model's plan on this silo; returns the silo's plan version after the change.</summary>
    [Alias("apply")]
    Task<long> Apply(string model, PlacementPlanMessage plan);

    [Alias("remove")]
    Task<bool> Remove(string model);

    /// <summary>Sets the model's hot-expert replication on this silo; returns the silo's plan version after the change.</summary>
    [Alias("apply-replicas")]
    Task<long> ApplyReplicas(string model, ReplicaPlacementMessage placement);

    [Alias("remove-replicas")]
    Task<bool> RemoveReplicas(string model);

    /// <summary>Tokens the model's expert activations on this silo have computed, by grain key (<see cref="ExpertTokenCounts"/>).</summary>
    [Alias("expert-tokens")]
    Task<Dictionary<string, long>> ExpertTokens(string model);
}

/// <summary>
/// Places a grain on the silo its key names: the key is the silo's address (<see cref="SiloAddress.ToParsableString"/> or
/// its <c>ToString</c>, the grains' <c>RuntimeIdentity</c>), optionally followed by <c>|</c> and anything else.
/// </summary>
public sealed class SiloTargetPlacementStrategy : PlacementStrategy
{
    internal static readonly SiloTargetPlacementStrategy Instance = new();
}

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class SiloTargetPlacementAttribute() : PlacementAttribute(SiloTargetPlacementStrategy.Instance);

internal sealed class SiloTargetPlacementDirector : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var key = target.GrainIdentity.Key.ToString() ?? "";
        var bar = key.IndexOf('|');
        var name = bar < 0 ? key : key[..bar];
        var silo = context.GetCompatibleSilos(target).FirstOrDefault(s => s.ToParsableString() == name || s.ToString() == name)
            ?? throw new UnknownExpertException($"'{name}' is not an active silo of the cluster.");
        return Task.FromResult(silo);
    }
}

[SiloTargetPlacement]
internal sealed class PlacementAgentGrain(IServiceProvider services) : Grain, IPlacementAgentGrain
{
    private ExpertPlacementPlans Plans => services.GetService<ExpertPlacementPlans>()
        ?? throw new InvalidOperationException("This silo has no placement plan store: call AddExpertPlacementPlans on every silo.");

    public Task<long> Apply(string model, PlacementPlanMessage plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        var plans = Plans;
        plans.Apply(model, plan.ToPlan());
        services.GetService<Generation.ExpertLocations>()?.Forget(model); // coherent sessions ask again where experts are
        return Task.FromResult(plans.Version);
    }

    public Task<bool> Remove(string model) => Task.FromResult(Plans.Remove(model));

    public Task<long> ApplyReplicas(string model, ReplicaPlacementMessage placement)
    {
        ArgumentNullException.ThrowIfNull(placement);
        ReplicaPlacement replicas;
        try
        {
            replicas = placement.ToPlacement();
        }
        catch (ArgumentException e)
        {
            throw new PlacementInfeasibleException($"Malformed replica placement for '{model}': {e.Message}");
        }
        var plans = Plans;
        plans.ApplyReplicas(model, replicas);
        return Task.FromResult(plans.Version);
    }

    public Task<bool> RemoveReplicas(string model) => Task.FromResult(Plans.RemoveReplicas(model));

    public Task<Dictionary<string, long>> ExpertTokens(string model) =>
        Task.FromResult(services.GetService<ExpertTokenCounts>()?.Snapshot(model) ?? []);
}

/// <summary>What applying a plan to a running cluster did.</summary>
public sealed record PlanMoveReport(int Silos, int Experts, int Moved, int AlreadyPlaced, double Seconds);

/// <summary>
/// Applies a placement plan to a running cluster, and the retry that lets requests ride over a move. Experts move by
/// Orleans activation migration: every silo gets the plan first, then each expert of the plan is asked to migrate when
/// idle; the placement director, asked again, answers the plan's silo (an expert already there stays). Requests that
/// reach an expert while it moves are held or forwarded by Orleans; one that fails on the way (a rejected or forwarded
/// message) is retried by the layer within its deadline (<see cref="CallAsync"/>).
/// </summary>
public static class ExpertMoves
{
    private static readonly System.Diagnostics.Metrics.Counter<long> RetryCounter =
        Diagnostics.MoeGrainsMetrics.Meter.CreateCounter<long>("moegrains.dispatch.expert_retries", description: "Expert calls retried after a transient Orleans failure (a moving expert)");

    private static long _retries;

    /// <summary>Expert calls retried in this process so far.</summary>
    public static long Retries => Interlocked.Read(ref _retries);

    /// <summary>Calls an expert, retrying Orleans' transient failures (an activation moving away) until the deadline.</summary>
    public static async Task<ExpertResult> CallAsync(IExpertGrain expert, WireTensor payload, CancellationToken deadline)
    {
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                return await expert.Forward(payload, deadline);
            }
            catch (OrleansException) when (!deadline.IsCancellationRequested && attempt < 50)
            {
                Interlocked.Increment(ref _retries);
                RetryCounter.Add(1);
                await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(200, 10 << Math.Min(attempt, 5))), deadline);
            }
        }
    }

    /// <summary>
    /// Sends <paramref name="plan"/> to every active silo, then moves the model's experts the plan covers to their
    /// planned silos, and waits (up to <paramref name="timeout"/>) until each answers from there. The plan must be made for
    /// the cluster's silo count (silo <c>c</c> = the <c>c</c>-th silo in the director's order: GPU silos if any, by address).
    /// </summary>
    public static async Task<PlanMoveReport> ApplyAsync(IGrainFactory grains, string model, PlacementPlan plan, TimeSpan? timeout = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(grains);
        ArgumentNullException.ThrowIfNull(plan);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var (hosts, order) = await SilosAsync(grains, plan.Silos);
        var message = PlacementPlanMessage.From(plan);
        await Task.WhenAll(hosts.Select(h => grains.GetGrain<IPlacementAgentGrain>(h.ToParsableString()).Apply(model, message)));

        var experts = plan.Layers.SelectMany(l => Enumerable.Range(0, plan.Experts).Select(e => (Layer: l, Expert: e))).ToArray();
        var (moved, placed) = await PlaceAsync(grains,
            [.. experts.Select(x => (ExpertKey.Expert(model, x.Layer, x.Expert), order[plan.SiloOf(x.Layer, x.Expert)!.Value].Silo))],
            sw, sw.Elapsed + (timeout ?? TimeSpan.FromSeconds(60)), cancellationToken);
        return new PlanMoveReport(hosts.Length, experts.Length, moved, placed, sw.Elapsed.TotalSeconds);
    }

    /// <summary>The silos experts are placed on, in the director's order (GPU silos if any, by address), checked against a plan's count.</summary>
    internal static async Task<(SiloAddress[] Hosts, SiloDeviceInfo[] Order)> SilosAsync(IGrainFactory grains, int planned)
    {
        var hosts = (await grains.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true)).Keys.ToArray();
        var info = await grains.GetGrain<IClusterInfoGrain>(0).Silos();
        var order = info.Any(s => s.IsGpu) ? info.Where(s => s.IsGpu).ToArray() : info;
        if (order.Length != planned)
        {
            throw new PlacementInfeasibleException($"The plan is for {planned} silos; the cluster places experts on {order.Length}.");
        }
        return (hosts, order);
    }

    /// <summary>
    /// Activates (or moves) each expert grain of <paramref name="targets"/> (key, silo) until it answers from its silo:
    /// one not there is asked to migrate when idle, and asked again now and then. Returns how many had to move and how
    /// many were already there (or were activated there).
    /// </summary>
    internal static async Task<(int Moved, int Placed)> PlaceAsync(IGrainFactory grains, IReadOnlyList<(string Key, string Target)> targets,
        System.Diagnostics.Stopwatch sw, TimeSpan limit, CancellationToken cancellationToken)
    {
        var moved = 0;
        var placed = 0;
        foreach (var (key, target) in targets)
        {
            var grain = grains.GetGrain<IExpertGrain>(key);
            var first = true;
            var polls = 0;
            while (true)
            {
                var at = (await grain.Describe()).Silo;
                if (at == target)
                {
                    if (first) placed++;
                    else moved++;
                    break;
                }
                if (sw.Elapsed > limit)
                {
                    throw new TimeoutException($"Expert {key} is still on {at}, not {target}, after {sw.Elapsed.TotalSeconds:F0} s.");
                }
                cancellationToken.ThrowIfCancellationRequested();
                if (first || ++polls % 20 == 0)
                {
                    // Asked again now and then: a migration the runtime declined (never idle, say) is retried.
                    await grain.AsReference<IGrainManagementExtension>().MigrateOnIdle();
                    first = false;
                }
                await Task.Delay(50, cancellationToken);
            }
        }
        return (moved, placed);
    }
}
