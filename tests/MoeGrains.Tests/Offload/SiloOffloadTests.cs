using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Offload;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Offload;

/// <summary>One real silo in this process whose device holds at most 2 of each layer's 8 experts (LRU).</summary>
public sealed class OffloadClusterFixture() : LocalClusterFixture(1)
{
    public const int BUDGET = 2;

    public ModelSpec Spec { get; private set; } = null!;

    public string CheckpointPath => Dir.File("tiny.safetensors");

    protected override void Prepare() => Spec = TinyModel.Create(CheckpointPath);

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o =>
        {
            o.Device = "cpu";
            o.Models["tiny"] = CheckpointPath;
            o.ExpertTimeoutMs = 20_000;
            o.Offload.DeviceBudgetExperts = BUDGET;
            o.Offload.Policy = "lru";
            o.Offload.StoreRoot = Dir.File("stores");
        })
        .AddExpertPlugins(TestPaths.Plugins);
}

public sealed class SiloOffloadTests(OffloadClusterFixture fixture) : IClassFixture<OffloadClusterFixture>
{
    private SiloExpertCache Cache => fixture.Cluster.Silos[0].Services.GetRequiredService<SiloExpertCache>();

    [Fact]
    public async Task Expert_grains_under_a_budget_of_2_of_8_experts_give_the_all_resident_output_and_count_their_loads()
    {
        manual_seed(21);
        using var hidden = randn(48, fixture.Spec.DModel);
        using var local = new LocalMoeModel(TinyModel.BuiltIn(), fixture.CheckpointPath, TinyModel.Services, name: "tiny");
        var before = Cache.Report("x");
        var used = 0;
        for (var pass = 0; pass < 2; pass++)
        {
            for (var layer = 0; layer < fixture.Spec.Layers; layer++)
            {
                using var expected = await local.ForwardLayerAsync(layer, hidden);
                var result = await fixture.Cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("tiny", layer))
                    .Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)));
                Assert.Empty(result.FailedExperts);
                using var actual = result.Output.ToTensor();
                Assert.True(actual.allclose(expected.Output, rtol: 1e-5, atol: 1e-6), $"layer {layer}: the offloaded output differs");
                Assert.True(Cache.Cache!.Stats().ResidentExperts <= OffloadClusterFixture.BUDGET);
                used += result.Calls.Length;
            }
        }
        var stats = Cache.Cache!.Stats();
        Assert.True(stats.PeakResidentExperts <= OffloadClusterFixture.BUDGET, $"peak {stats.PeakResidentExperts} experts resident");
        Assert.True(used > OffloadClusterFixture.BUDGET * 2);
        var report = await fixture.Cluster.GrainFactory.GetGrain<IOffloadCacheGrain>(fixture.Cluster.Silos[0].Services.GetRequiredService<ILocalSiloDetails>().SiloAddress.ToString()).Stats();
        Assert.True(report.Enabled);
        Assert.Equal("lru", report.Policy);
        Assert.Equal(used, report.Accesses - before.Accesses); // every expert call went through the cache
        Assert.True(report.Loads - before.Loads > OffloadClusterFixture.BUDGET, $"{report.Loads - before.Loads} loads"); // more experts than fit: they were loaded (and evicted) again
        Assert.True(report.Evictions > 0);
        Assert.True(report.BytesRead - before.BytesRead >= (report.Loads - before.Loads) * 3L * 32 * 64 * 4);
        Assert.True(report.ResidentExperts <= OffloadClusterFixture.BUDGET);
    }

    [Theory]
    [InlineData("fifo", "MoeGrains:Offload:Policy")]
    [InlineData("lru", "MoeGrains:Offload:DeviceBudgetExperts")]
    public async Task A_bad_offload_setting_stops_the_silo_at_start_naming_it(string policy, string named)
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await using var cluster = await LocalCluster.StartAsync(1, (_, silo) => silo.AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.Offload.Policy = policy;
                o.Offload.DeviceBudgetExperts = named.EndsWith("Experts", StringComparison.Ordinal) ? -1 : 2;
            }).AddExpertPlugins(TestPaths.Plugins));
        });
        Assert.IsType<OptionsValidationException>(error);
        Assert.Contains(named, error.Message, StringComparison.Ordinal);
    }
}
