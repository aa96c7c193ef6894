using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Hosting;

namespace MoeGrains.Tests.Cluster;

/// <summary>The readiness probe (<c>/health/ready</c>) on a real silo: ready once joined, not ready when a model's checkpoint is broken.</summary>
public sealed class ReadinessTests
{
    [Fact]
    public async Task A_joined_silo_with_valid_plugins_and_models_is_ready_and_a_broken_checkpoint_is_named()
    {
        var dir = Directory.CreateTempSubdirectory("moegrains-ready-");
        var broken = Path.Combine(dir.FullName, "broken.safetensors");
        await File.WriteAllBytesAsync(broken, new byte[] { 1, 2, 3 });
        try
        {
            await using (var good = await LocalCluster.StartAsync(1, (_, silo) => silo.AddMoeGrains(o => o.Device = "cpu").AddExpertPlugins(Infrastructure.TestPaths.Plugins)))
            {
                var report = good.Silos[0].Services.GetRequiredService<SiloReadiness>().Check();
                Assert.True(report.Ready, string.Join("; ", report.Problems));
                Assert.Equal("Active", report.SiloStatus);
            }

            await using var bad = await LocalCluster.StartAsync(1, (_, silo) => silo.AddMoeGrains(o => { o.Device = "cpu"; o.Models["m"] = broken; })
                .AddExpertPlugins(Infrastructure.TestPaths.Plugins));
            var badReport = bad.Silos[0].Services.GetRequiredService<SiloReadiness>().Check();
            Assert.False(badReport.Ready);
            Assert.Contains(badReport.Problems, p => p.Contains("broken.safetensors", StringComparison.Ordinal));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
