using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Placement;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Placement;

[Collection(PlacementClusterCollection.Name)]
public sealed class ExpertMoveTests(PlacementClusterFixture fixture)
{
    [Fact]
    public async Task Moving_experts_under_load_loses_no_request()
    {
        var checkpoint = fixture.CheckpointPath;
        var spec = fixture.Spec;
        var cluster = fixture.Cluster;
        var grains = cluster.GrainFactory;
        var info = grains.GetGrain<IClusterInfoGrain>(0);
        var silos = await info.Silos();
        Assert.Equal(2, silos.Length);
        async Task<string[]> Where() =>
            await Task.WhenAll(Enumerable.Range(0, 8).Select(async e => (await grains.GetGrain<IExpertGrain>(ExpertKey.Expert("moving", 0, e)).Describe()).Silo));
        var before = await Where();
        for (var e = 0; e < 8; e++) Assert.Equal(silos[e % 2].Silo, before[e]); // default: round-robin

        manual_seed(3);
        using var hidden = randn(16, spec.DModel);
        using var local = new LocalMoeModel(TinyModel.BuiltIn(), checkpoint, TinyModel.Services, name: "moving");
        using var expected = await local.ForwardLayerAsync(0, hidden);
        var request = new MoeLayerRequest(WireTensor.FromTensor(hidden));
        var layer = grains.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("moving", 0));

        // Four clients send layer steps back to back while the plan moves six of the eight experts.
        using var stop = new CancellationTokenSource();
        var done = 0;
        var errors = new List<string>();
        async Task Client()
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var result = await layer.Forward(request);
                    using var y = result.Output.ToTensor();
                    if (result.FailedExperts.Length > 0 || !y.allclose(expected.Output, rtol: 1e-4, atol: 1e-5))
                    {
                        lock (errors) errors.Add($"failed experts [{string.Join(",", result.FailedExperts)}]: {string.Join("; ", result.Calls.Select(c => c.Error).Where(e => e is not null))}");
                    }
                }
                catch (Exception e)
                {
                    lock (errors) errors.Add($"{e.GetType().Name}: {e.Message}");
                }
                Interlocked.Increment(ref done);
            }
        }
        var clients = Enumerable.Range(0, 4).Select(_ => Task.Run(Client)).ToArray();
        while (Volatile.Read(ref done) < 8) await Task.Delay(20);
        var plan = new PlacementPlan([0], 8, 2, [1, 0, 1, 0, 1, 0, 0, 1]);
        var report = await ExpertMoves.ApplyAsync(grains, "moving", plan, TimeSpan.FromSeconds(90));
        var duringMove = Volatile.Read(ref done);
        while (Volatile.Read(ref done) < duringMove + 8) await Task.Delay(20);
        stop.Cancel();
        await Task.WhenAll(clients);

        Assert.Empty(errors);
        Assert.Equal(2, report.Silos);
        Assert.Equal(6, report.Moved); // experts 0-5 change silo; 6 and 7 are where round-robin put them
        Assert.Equal(2, report.AlreadyPlaced);
        var after = await Where();
        for (var e = 0; e < 8; e++) Assert.Equal(silos[plan.SiloOf(0, e)!.Value].Silo, after[e]);
        // New activations follow the plan too (it reached every silo).
        var plans = cluster.Silos.Select(s => (ExpertPlacementPlans)s.Services.GetService(typeof(ExpertPlacementPlans))!).ToArray();
        Assert.All(plans, p => Assert.Equal(1, p.SiloIndex("moving", 0, 0, 2)));
    }
}
