using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Models;
using Orleans.Runtime.MembershipService.SiloMetadata;
using Orleans.Concurrency;

namespace MoeGrains.Grains;

/// <summary>Answers what the cluster is made of: silos with their devices, and the models served.</summary>
[StatelessWorker]
internal sealed class ClusterInfoGrain(ISiloMetadataCache metadata, ModelCatalog models, IClusterMembershipService membership) : Grain, IClusterInfoGrain
{
    public async Task<SiloDeviceInfo[]> Silos()
    {
        var hosts = await GrainFactory.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true);
        return hosts.Keys.OrderBy(s => s.ToString(), StringComparer.Ordinal).Select(s =>
        {
            var data = metadata.GetSiloMetadata(s).Metadata;
            var device = data.TryGetValue(SiloDevice.DeviceKey, out var d) ? d : "unknown";
            var memory = data.TryGetValue(SiloDevice.MemoryKey, out var m) && long.TryParse(m, out var v) ? v : 0;
            return new SiloDeviceInfo(s.ToString(), device, memory, device.StartsWith("cuda", StringComparison.Ordinal));
        }).ToArray();
    }

    public Task<string[]> ActiveSilosLocalView() => Task.FromResult(
        membership.CurrentSnapshot.Members.Values.Where(m => m.Status == SiloStatus.Active).Select(m => m.SiloAddress.ToString()).Order(StringComparer.Ordinal).ToArray());

    public Task<ModelInfo> Model(string model) => Task.FromResult(models.Get(model).ToInfo());
}
