using MoeGrains.Contracts;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace MoeGrains.Placement;

/// <summary>Places expert grains on the silo their layer and index map to, spreading a layer's experts over silos.</summary>
public sealed class ExpertPlacementStrategy : PlacementStrategy
{
    internal static readonly ExpertPlacementStrategy Instance = new();
}

/// <summary>Marks a grain class for <see cref="ExpertPlacementStrategy"/>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class ExpertPlacementAttribute() : PlacementAttribute(ExpertPlacementStrategy.Instance);

/// <summary>
/// Chooses a silo for an expert: silos sorted by address (so every silo computes the same answer), GPU silos first
/// when any are present, then the silo the current plan names (<see cref="IExpertPlacementPlans"/>, when one is
/// registered and covers the expert), else <see cref="DefaultExpertPlacement"/> (spread in proportion to the silos'
/// memory budgets; <c>(e + l) mod n</c> when they are equal). Replica keys (<see cref="ExpertKey.Replica"/>) go where the
/// replication plan says, else r silos after their expert's default silo. Keys that
/// are not expert keys, and keys naming a model, layer or expert that does not exist, are refused before any activation.
/// </summary>
internal sealed class ExpertPlacementDirector(Orleans.Runtime.MembershipService.SiloMetadata.ISiloMetadataCache metadata, Models.ModelCatalog models,
    IExpertPlacementPlans? plans = null) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target).OrderBy(s => s.ToString(), StringComparer.Ordinal).ToArray();
        var gpus = silos.Where(IsGpu).ToArray();
        if (gpus.Length > 0)
        {
            silos = gpus;
        }
        // Unknown models, layers and experts are refused here, before any activation is created.
        var (model, layer, expert, replica) = ExpertKey.ParseReplica(target.GrainIdentity.Key.ToString() ?? "");
        models.Check(model, layer, expert);
        var planned = replica == 0 ? plans?.SiloIndex(model, layer, expert, silos.Length) : plans?.ReplicaSiloIndex(model, layer, expert, replica, silos.Length);
        if (planned is int i && i >= 0 && i < silos.Length)
        {
            return Task.FromResult(silos[i]);
        }
        var experts = models.Get(model).Experts;
        // Without a plan, replica r goes r silos after the expert's own.
        return Task.FromResult(silos[(DefaultExpertPlacement.SiloIndex(layer, expert, experts, silos.Select(Budget).ToArray()) + replica) % silos.Length]);
    }

    private long Budget(SiloAddress silo) =>
        metadata.GetSiloMetadata(silo).Metadata.TryGetValue(Devices.SiloDevice.MemoryKey, out var text) && long.TryParse(text, out var bytes) ? bytes : 0;

    private bool IsGpu(SiloAddress silo)
    {
        var data = metadata.GetSiloMetadata(silo).Metadata;
        return data.TryGetValue(Devices.SiloDevice.DeviceKey, out var device) && device.StartsWith("cuda", StringComparison.Ordinal);
    }
}
