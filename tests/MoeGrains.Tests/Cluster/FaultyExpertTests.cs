using System.Diagnostics;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Cluster;

/// <summary>Two silos serving a model whose experts misbehave by index (test-faulty) behind a uniform router.</summary>
public sealed class FaultClusterFixture() : LocalClusterFixture(2)
{
    public const int DModel = 8;

    private string CheckpointPath => Dir.File("faulty.safetensors");

    protected override void Prepare()
    {
        var spec = new ModelSpec("faulty", 3, 6, DModel, DModel, 6, "test-faulty", "test-uniform");
        SafeTensorsFile.Write(CheckpointPath, [], spec.Settings); // these test plugins have no weights
    }

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o =>
        {
            o.Device = "cpu";
            o.Models["faulty"] = CheckpointPath;
            o.ExpertTimeoutMs = 1000;
            o.DeviceHungAfterMs = 150;
            o.MaxQueuedPerExpert = 2;
            o.BreakerFailureThreshold = 2;
            o.BreakerCooldownMs = 60_000;
        })
        .AddExpertPlugins(Path.Combine(TestPaths.TestPlugins, "MoeGrains.TestPlugins.Good"));
}

public sealed class FaultyExpertTests(FaultClusterFixture fixture) : IClassFixture<FaultClusterFixture>
{
    private IMoeLayerGrain Layer(int layer) => fixture.Cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("faulty", layer));

    [Fact]
    public async Task Throwing_nan_and_hung_experts_are_masked_within_the_deadline_and_the_rest_renormalised()
    {
        using var x = ones(3, FaultClusterFixture.DModel);
        var sw = Stopwatch.StartNew();
        var result = await Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(x)) { ExpertTimeoutMs = 3000 });
        // Below the hung expert's 10 s is what shows the deadline held; the margin over 3 s is for the first cluster call of a
        // loaded test run (a clean-clone CI run took 7.3 s here at start-up).
        Assert.True(sw.ElapsedMilliseconds < 9000, $"took {sw.ElapsedMilliseconds} ms with a 3000 ms deadline (the hung expert sleeps 10 s)");
        Assert.Equal([2, 3, 4], result.FailedExperts);
        Assert.Contains(result.Calls, c => c.Expert == 2 && c.Error!.Contains("injected failure"));
        Assert.Contains(result.Calls, c => c.Expert == 3 && c.Error!.Contains("non-finite"));
        Assert.Contains(result.Calls, c => c.Expert == 4 && c.Error!.Contains("did not answer"));
        // Survivors 0, 1, 5 scale by 1, 2, 6 with equal weights: the masked reference is 3 * x.
        var values = result.Output.ToFloatArray();
        Assert.All(values, v => Assert.Equal(3f, v, 4));
    }

    [Fact]
    public async Task Fewer_than_k_min_answers_is_a_typed_error()
    {
        using var x = ones(2, FaultClusterFixture.DModel);
        var e = await Assert.ThrowsAsync<ExpertQuorumException>(() => Layer(1).Forward(new MoeLayerRequest(WireTensor.FromTensor(x)) { ExpertTimeoutMs = 3000, KMin = 5 }));
        Assert.Contains("k_min = 5", e.Message);
    }

    [Fact]
    public async Task Repeated_failures_open_the_breaker_and_the_expert_is_skipped_without_waiting()
    {
        using var x = ones(2, FaultClusterFixture.DModel);
        for (var i = 0; i < 2; i++)
        {
            var failing = await Layer(2).Forward(new MoeLayerRequest(WireTensor.FromTensor(x)) { ExpertTimeoutMs = 3000 });
            Assert.Equal([2, 3, 4], failing.FailedExperts);
        }
        var sw = Stopwatch.StartNew();
        var result = await Layer(2).Forward(new MoeLayerRequest(WireTensor.FromTensor(x)) { ExpertTimeoutMs = 3000 });
        Assert.Equal([2, 3, 4], result.BlockedExperts);
        Assert.Empty(result.FailedExperts);
        Assert.DoesNotContain(result.Calls, c => c.Expert is 2 or 3 or 4);
        // The hung expert would cost the whole 3 s deadline; skipped, the request does not wait for it.
        Assert.True(sw.ElapsedMilliseconds < 2500, $"a blocked expert still cost {sw.ElapsedMilliseconds} ms");
        Assert.All(result.Output.ToFloatArray(), v => Assert.Equal(3f, v, 4));
    }

    [Fact]
    public async Task Requests_beyond_an_experts_queue_bound_are_refused_at_once()
    {
        using var x = ones(1, FaultClusterFixture.DModel);
        var payload = WireTensor.FromTensor(x);
        var slow = fixture.Cluster.GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Expert("faulty", 1, 5)); // sleeps 100 ms
        await slow.Forward(payload); // activate first, so that the burst below arrives together
        var sw = Stopwatch.StartNew();
        var calls = Enumerable.Range(0, 10).Select(_ => slow.Forward(payload)).ToArray();
        var outcomes = new List<Exception?>();
        foreach (var call in calls)
        {
            try { await call; outcomes.Add(null); }
            catch (Exception e) { outcomes.Add(e); }
        }
        Assert.Equal(2, outcomes.Count(o => o is null));
        var refused = outcomes.OfType<OverloadedException>().ToList();
        Assert.Equal(8, refused.Count);
        Assert.All(refused, e => Assert.Equal(2, e.Limit));
        Assert.Contains("already holds 2 requests", refused[0].Message);
    }
}
