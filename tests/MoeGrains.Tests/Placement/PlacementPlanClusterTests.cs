using MoeGrains.Contracts;
using MoeGrains.Hosting;
using MoeGrains.Placement;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Placement;

public sealed class PlacementPlanClusterTests
{
    [Fact]
    public async Task Experts_are_activated_where_the_plan_says_and_uncovered_layers_fall_back_to_round_robin()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = dir.File("tiny.safetensors");
        TinyModel.Create(checkpoint, layers: 2, experts: 8);
        // Layer 0 only: experts 0-3 on silo 1, 4-7 on silo 0 (round-robin would alternate).
        var plan = new PlacementPlan([0], 8, 2, [1, 1, 1, 1, 0, 0, 0, 0]);
        var planFile = dir.File("plan.csv");
        using (var writer = new StreamWriter(planFile)) plan.WriteCsv(writer);

        await using var cluster = await LocalCluster.StartAsync(2, (_, silo) => silo
            .AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.Models["tiny"] = checkpoint;
            })
            .AddExpertPlugins(TestPaths.Plugins)
            .AddExpertPlacementPlans(p => p.ApplyFile("tiny", planFile)));

        async Task<string> SiloOf(int layer, int expert) =>
            (await cluster.GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Expert("tiny", layer, expert)).Describe()).Silo;

        // Both silos must be members before the first activation, or the director would see one silo and ignore the plan
        // (LocalCluster starts once they are).
        var info = cluster.GrainFactory.GetGrain<IClusterInfoGrain>(0);
        var silos = await info.Silos();
        Assert.Equal(2, silos.Length);
        var addresses = silos.Select(s => s.Silo).ToArray(); // sorted by address, as the director sorts them

        var layer0 = await Task.WhenAll(Enumerable.Range(0, 8).Select(e => SiloOf(0, e)));
        for (var e = 0; e < 8; e++)
        {
            Assert.Equal(addresses[plan.SiloOf(0, e)!.Value], layer0[e]);
        }
        var layer1 = await Task.WhenAll(Enumerable.Range(0, 8).Select(e => SiloOf(1, e)));
        for (var e = 0; e < 8; e++)
        {
            Assert.Equal(addresses[(e + 1) % 2], layer1[e]);
        }
    }

    [Fact]
    public void A_plan_is_followed_only_for_the_cluster_size_and_layers_it_was_made_for()
    {
        var plans = new ExpertPlacementPlans();
        Assert.Null(plans.SiloIndex("m", 0, 0, 2));
        plans.Apply("m", new PlacementPlan([0, 3], 2, 2, [1, 0, 0, 1]));
        Assert.Equal(1, plans.SiloIndex("m", 0, 0, 2));
        Assert.Equal(1, plans.SiloIndex("m", 3, 1, 2));
        Assert.Null(plans.SiloIndex("m", 1, 0, 2));
        Assert.Null(plans.SiloIndex("m", 0, 0, 3));
        Assert.Null(plans.SiloIndex("other", 0, 0, 2));
        Assert.True(plans.Remove("m"));
        Assert.Null(plans.SiloIndex("m", 0, 0, 2));
        Assert.Equal(2, plans.Version);
    }
}
