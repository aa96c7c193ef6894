using MoeGrains.Contracts;
using MoeGrains.Models;
using MoeGrains.Plugins;
using Orleans.Runtime;

namespace MoeGrains.Hosting;

/// <summary>What a readiness probe reports: ready, or the list of what is wrong.</summary>
public sealed record ReadinessReport(bool Ready, string SiloStatus, IReadOnlyList<string> Problems);

/// <summary>
/// Readiness of this silo (the <c>/health/ready</c> endpoint): it has joined its cluster (Active in the membership
/// snapshot), its plugins loaded without errors, and every configured model's checkpoint is valid. Liveness needs
/// none of this and is answered by the host alone.
/// </summary>
public sealed class SiloReadiness(PluginCatalog plugins, ModelCatalog models, IClusterMembershipService membership, ILocalSiloDetails local)
{
    public ReadinessReport Check()
    {
        var problems = plugins.Errors.Select(e => e.ToString()).ToList();
        var status = membership.CurrentSnapshot.GetSiloStatus(local.SiloAddress);
        if (status != SiloStatus.Active)
        {
            problems.Add($"this silo has not joined its cluster (membership status {status})");
        }
        foreach (var name in models.Names)
        {
            try
            {
                models.Get(name);
            }
            catch (MoeGrainsException e)
            {
                problems.Add(e.Message);
            }
        }
        return new ReadinessReport(problems.Count == 0, status.ToString(), problems);
    }
}
