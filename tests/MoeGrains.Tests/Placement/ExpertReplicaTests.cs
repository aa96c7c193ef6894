using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Placement;

/// <summary>
/// Two real silos serving a tiny one-layer model with routing traces of every token, as "tiny" (replicated by
/// <see cref="ExpertReplicaTests"/>) and as "moving" (moved by <see cref="ExpertMoveTests"/>), so the tests do not see
/// each other's placement.
/// </summary>
public sealed class PlacementClusterFixture() : LocalClusterFixture(2)
{
    public ModelSpec Spec { get; private set; } = null!;

    public string CheckpointPath => Dir.File("tiny.safetensors");

    protected override void Prepare() => Spec = TinyModel.Create(CheckpointPath, layers: 1, experts: 8);

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o =>
        {
            o.Device = "cpu";
            o.Models["tiny"] = CheckpointPath;
            o.Models["moving"] = CheckpointPath;
            o.ExpertTimeoutMs = 30_000;
        })
        .AddExpertPlugins(TestPaths.Plugins)
        .AddRoutingTraces(o => o.SamplingRate = 1);
}

[CollectionDefinition(Name)]
public sealed class PlacementClusterCollection : ICollectionFixture<PlacementClusterFixture>
{
    public const string Name = "placement-cluster";
}

[Collection(PlacementClusterCollection.Name)]
public sealed class ExpertReplicaTests(PlacementClusterFixture fixture)
{
    [Fact]
    public async Task Hot_experts_are_replicated_on_the_other_silo_from_live_loads_and_outputs_stay_equal()
    {
        var grains = fixture.Cluster.GrainFactory;
        var info = grains.GetGrain<IClusterInfoGrain>(0);
        var silos = await info.Silos();
        Assert.Equal(2, silos.Length);

        // Skewed routing: tokens close to one direction, and the odd experts (all on silo 1 under round-robin) masked,
        // so every expert token of the default placement is computed on silo 0.
        manual_seed(11);
        using var direction = randn(1, fixture.Spec.DModel).mul(3);
        using var hidden = direction.expand(64, fixture.Spec.DModel).add(randn(64, fixture.Spec.DModel).mul(0.5)).contiguous();
        int[] masked = [1, 3, 5, 7];
        using var local = new LocalMoeModel(TinyModel.BuiltIn(), fixture.CheckpointPath, TinyModel.Services, name: "tiny");
        using var expected = await local.ForwardLayerAsync(0, hidden, masked: masked);
        var layer = grains.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("tiny", 0));
        MoeLayerRequest Request(long first) => new(WireTensor.FromTensor(hidden))
        {
            MaskedExperts = masked,
            TokenIds = [.. Enumerable.Range(0, 64).Select(i => first + i)],
        };
        double[] SiloTokens(MoeLayerResult r) => [.. silos.Select(s => (double)r.Calls.Where(c => c.Silo == s.Silo).Sum(c => c.Tokens))];

        var before = await layer.Forward(Request(0));
        using (var y = before.Output.ToTensor())
        {
            Assert.True(y.allclose(expected.Output, rtol: 0, atol: 1e-5));
        }
        var loadBefore = SiloTokens(before);
        Assert.Equal(128, loadBefore.Sum()); // 64 tokens, top-2
        Assert.Equal(2.0, ReplicaPlacement.Imbalance(loadBefore)); // all on silo 0

        // The live load, from the routes the cluster recorded, gives the replication plan.
        var collector = grains.GetGrain<IRoutingTraceGrain>("tiny");
        for (var wait = 0; await collector.Count() < 64 && wait < 200; wait++) await Task.Delay(50);
        var (load, traced) = await ExpertReplicas.LiveLoadsAsync(grains, "tiny", [0], 8);
        Assert.Equal(64, traced);
        Assert.Equal(128, load[0].Sum());
        Assert.All(masked, e => Assert.Equal(0, load[0][e]));
        var hot = Array.IndexOf(load[0], load[0].Max());
        var placement = ReplicaPlacement.Balance(load, [0], silos: 2, slots: ReplicaPlacement.DefaultSlots(8, 2));
        Assert.Equal(10, placement.Activations);
        var hotSilos = placement.ReplicaSilos[hot];
        Assert.True(hotSilos.Length >= 2, $"the hottest expert ({load[0][hot]} tokens) has {hotSilos.Length} replica(s)");
        Assert.Equal(2, hotSilos.Distinct().Count()); // spread over both silos

        var report = await ExpertReplicas.ApplyAsync(grains, "tiny", placement, TimeSpan.FromSeconds(90));
        Assert.Equal(2, report.Replicas);

        var after = await layer.Forward(Request(1000));
        using (var y = after.Output.ToTensor())
        {
            Assert.True(y.allclose(expected.Output, rtol: 0, atol: 1e-5), "replicated outputs differ from the reference");
        }
        Assert.Empty(after.FailedExperts);
        var hotCalls = after.Calls.Where(c => c.Expert == hot).ToArray();
        Assert.Equal(hotSilos.Length, hotCalls.Length); // one call per replica
        Assert.Equal(load[0][hot], hotCalls.Sum(c => c.Tokens));
        Assert.Equal(2, hotCalls.Select(c => c.Silo).Distinct().Count()); // computed on both silos
        for (var r = 0; r < hotSilos.Length; r++)
        {
            Assert.Equal(silos[hotSilos[r]].Silo, hotCalls.Single(c => c.Replica == r).Silo);
        }
        var loadAfter = SiloTokens(after);
        Assert.Equal(128, loadAfter.Sum());
        var imbalance = ReplicaPlacement.Imbalance(loadAfter);
        Assert.True(imbalance < 1.25, $"per-silo expert tokens {string.Join("/", loadAfter)}: max/mean {imbalance:F2}");

        // The per-silo counters saw both steps' tokens, each once.
        var counted = await ExpertReplicas.SiloTokensAsync(grains, "tiny");
        Assert.Equal(256, counted.Values.Sum());

        // Without replication the layer calls the experts' own grains again (now where EPLB put them), same output.
        await ExpertReplicas.RemoveAsync(grains, "tiny");
        var removed = await layer.Forward(Request(2000));
        Assert.All(removed.Calls, c => Assert.Equal(0, c.Replica));
        using var z = removed.Output.ToTensor();
        Assert.True(z.allclose(expected.Output, rtol: 0, atol: 1e-5));
    }

    [Fact]
    public async Task Replica_keys_are_checked_before_activation()
    {
        var grains = fixture.Cluster.GrainFactory;
        foreach (var key in new[] { "tiny/0/1/0", "tiny/0/1/64", "tiny/0/1/x", "tiny/0/9/1", "tiny/0/1/2/3" })
        {
            await Assert.ThrowsAsync<UnknownExpertException>(() => grains.GetGrain<IExpertGrain>(key).Describe());
        }
        var info = await grains.GetGrain<IExpertGrain>(ExpertKey.Replica("tiny", 0, 1, 3)).Describe();
        Assert.Equal("tiny/0/1/3", info.Key);
    }

    [Fact]
    public void Splitting_over_replicas_keeps_every_token_once_in_order()
    {
        var groups = ExpertGroup.FromRouting([0, 1, 0, 2, 0, 1, 0, 2, 0, 1], [.1f, .9f, .2f, .8f, .3f, .7f, .4f, .6f, .5f, .5f], tokens: 5, k: 2, numExperts: 3);
        foreach (var rotation in new[] { 0, 1, 2, 7 })
        {
            var split = ExpertGroup.SplitOverReplicas(groups, [3, 1, 2], rotation);
            foreach (var g in groups)
            {
                var parts = split.Where(s => s.Expert == g.Expert).ToArray();
                Assert.Equal(g.Tokens, parts.SelectMany(p => p.Tokens));
                Assert.Equal(g.Weights, parts.SelectMany(p => p.Weights));
                Assert.Equal(parts.Length, parts.Select(p => p.Replica).Distinct().Count());
                var r = new[] { 3, 1, 2 }[g.Expert];
                Assert.Equal(Math.Min(r, g.Tokens.Length), parts.Length);
                Assert.All(parts, p => Assert.InRange(p.Tokens.Length, g.Tokens.Length / r, g.Tokens.Length / r + 1));
            }
            Assert.Equal(3, split.Count(s => s.Expert == 0)); // expert 0: 5 tokens over 3 replicas
            Assert.Equal([0, 1, 2], split.Where(s => s.Expert == 0).Select(s => s.Replica).Order());
        }
        // One token over two replicas: the rotation decides which replica runs it.
        var one = ExpertGroup.FromRouting([0], [1f], 1, 1, 1);
        Assert.Equal(1, ExpertGroup.SplitOverReplicas(one, [2], 0).Single().Replica);
        Assert.Equal(0, ExpertGroup.SplitOverReplicas(one, [2], 1).Single().Replica);
        Assert.Same(groups, ExpertGroup.SplitOverReplicas(groups, null, 5));
    }

    [Fact]
    public void Eplb_balance_replicates_the_hottest_and_lowers_the_hottest_silo()
    {
        double[][] load = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86], [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]];
        var placement = ReplicaPlacement.Balance(load, [3, 5], silos: 4, slots: 16);
        Assert.Equal(32, placement.Activations);
        for (var i = 0; i < 2; i++)
        {
            var counts = placement.Counts(placement.Layers[i])!;
            Assert.All(counts, c => Assert.True(c >= 1));
            Assert.Equal(16, counts.Sum());
            var hottest = Array.IndexOf(load[i], load[i].Max());
            Assert.True(counts[hottest] >= 2);
            var slotsPerSilo = Enumerable.Range(0, 4).Select(s => placement.ReplicaSilos.Skip(i * 12).Take(12).Sum(r => r.Count(x => x == s))).ToArray();
            Assert.All(slotsPerSilo, n => Assert.Equal(4, n)); // 16 slots, 4 per silo
            var unreplicated = new double[4];
            for (var e = 0; e < 12; e++) unreplicated[e % 4] += load[i][e];
            Assert.True(ReplicaPlacement.Imbalance(placement.SiloLoads(load)[i]) < ReplicaPlacement.Imbalance(unreplicated));
            Assert.True(ReplicaPlacement.Imbalance(placement.SiloLoads(load)[i]) < 1.1);
            Assert.All(placement.ReplicaSilos.Skip(i * 12).Take(12), r => Assert.Equal(r.Length, r.Distinct().Count())); // replicas on distinct silos
        }
        Assert.Null(placement.Counts(4));
        Assert.Equal(placement.ReplicaSilos.Select(r => r[0]), placement.Primary().Assignment);
        var copy = ReplicaPlacementMessage.From(placement).ToPlacement();
        Assert.Equal(placement.ReplicaSilos, copy.ReplicaSilos);
        Assert.Throws<ArgumentException>(() => (ReplicaPlacementMessage.From(placement) with { Counts = [1, 2] }).ToPlacement());
        Assert.Throws<ArgumentException>(() => new ReplicaPlacement([0], 2, 2, [[0], [2]]));
    }
}
