using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Dispatch;

public sealed class MoeLayerRunnerTests
{
    // 4 tokens, k = 2, experts scale their input by (e + 1).
    private static readonly RoutingResult Routing = new(4, 2, [0, 1, 1, 2, 2, 0, 3, -1], [0.75f, 0.25f, 0.5f, 0.5f, 0.6f, 0.4f, 1f, 0f]);

    private static Task<ExpertAnswer> Scale(int e, Tensor batch) => Task.FromResult(new ExpertAnswer(batch.mul(e + 1), "local", 0, 0));

    [Fact]
    public async Task Combines_each_expert_once_with_router_weights()
    {
        using var x = ones(4, 3);
        var calls = 0;
        using var result = await MoeLayerRunner.RunAsync(x, Routing, 4, 3, (e, b, ct) => { Interlocked.Increment(ref calls); return Scale(e, b); }, 1, TimeSpan.FromSeconds(5));
        Assert.Equal(4, calls); // one call per expert, not per token
        var expected = new[] { 0.75f * 1 + 0.25f * 2, 0.5f * 2 + 0.5f * 3, 0.6f * 3 + 0.4f * 1, 4f };
        for (var t = 0; t < 4; t++) Assert.Equal(expected[t], result.Output[t, 0].item<float>(), 5);
        Assert.Empty(result.FailedExperts);
    }

    [Fact]
    public async Task A_throwing_expert_is_masked_and_the_survivors_renormalised()
    {
        using var x = ones(4, 3);
        using var result = await MoeLayerRunner.RunAsync(x, Routing, 4, 3,
            (e, b, ct) => e == 1 ? throw new InvalidOperationException("boom") : Scale(e, b), 1, TimeSpan.FromSeconds(5));
        Assert.Equal([1], result.FailedExperts);
        // token 0: only expert 0 left -> 1; token 1: only expert 2 left -> 3.
        Assert.Equal(1f, result.Output[0, 0].item<float>(), 5);
        Assert.Equal(3f, result.Output[1, 0].item<float>(), 5);
        Assert.Equal(0.6f * 3 + 0.4f * 1, result.Output[2, 0].item<float>(), 5);
        Assert.Contains(result.Calls, c => c.Expert == 1 && c.Error!.Contains("boom"));
    }

    [Fact]
    public async Task A_hung_expert_is_masked_at_its_deadline()
    {
        using var x = ones(4, 3);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var result = await MoeLayerRunner.RunAsync(x, Routing, 4, 3,
            async (e, b, ct) => { if (e == 2) await Task.Delay(Timeout.Infinite, ct); return await Scale(e, b); }, 1, TimeSpan.FromMilliseconds(300));
        Assert.True(sw.ElapsedMilliseconds < 3000, $"took {sw.ElapsedMilliseconds} ms");
        Assert.Equal([2], result.FailedExperts);
        Assert.Equal(2f, result.Output[1, 0].item<float>(), 5);
    }

    [Fact]
    public async Task Fewer_than_k_min_answers_is_a_typed_error()
    {
        using var x = ones(4, 3);
        var e = await Assert.ThrowsAsync<ExpertQuorumException>(() => MoeLayerRunner.RunAsync(x, Routing, 4, 3,
            (e, b, ct) => e == 1 ? throw new InvalidOperationException("down") : Scale(e, b), 2, TimeSpan.FromSeconds(5)));
        Assert.Equal([1], e.FailedExperts);
        Assert.Contains("k_min = 2", e.Message);
    }

    [Fact]
    public async Task A_router_choosing_a_nonexistent_expert_is_refused()
    {
        using var x = ones(1, 3);
        var bad = new RoutingResult(1, 1, [1000], [1f]);
        await Assert.ThrowsAsync<UnknownExpertException>(() => MoeLayerRunner.RunAsync(x, bad, 4, 3, (e, b, ct) => Scale(e, b), 1, TimeSpan.FromSeconds(1)));
    }
}
