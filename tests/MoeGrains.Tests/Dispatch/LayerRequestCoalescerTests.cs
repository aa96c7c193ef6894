using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Dispatch;

public sealed class LayerRequestCoalescerTests
{
    private static MoeLayerRequest Request(float value, int rows, int timeoutMs = 0)
    {
        using var t = full(rows, 4, value);
        return new MoeLayerRequest(WireTensor.FromTensor(t)) { ExpertTimeoutMs = timeoutMs };
    }

    [Fact]
    public async Task Requests_that_wait_share_one_pass_each_gets_its_rows_and_idle_keys_are_removed()
    {
        var coalescer = new LayerRequestCoalescer();
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var passes = new List<long>();
        // The pass doubles its rows; the first one waits so that the others queue behind it.
        async Task<MoeLayerResult> Pass(MoeLayerRequest r, CancellationToken ct)
        {
            lock (passes) passes.Add(r.Hidden.Shape[0]);
            if (passes.Count == 1) await release.Task;
            using var x = r.Hidden.ToTensor(CPU);
            using var y = x.mul(2);
            return new MoeLayerResult(WireTensor.FromTensor(y), [], "here", 0, 1, []);
        }

        var first = coalescer.RunAsync("m/0", Request(1, 1), Pass, 64, InlineLane.Instance, CancellationToken.None);
        var waiting = Enumerable.Range(2, 3).Select(v => coalescer.RunAsync("m/0", Request(v, v), Pass, 64, InlineLane.Instance, CancellationToken.None)).ToArray();
        // Another deadline is another key: it runs at once, alone.
        var other = await coalescer.RunAsync("m/0", Request(9, 1, 250), Pass, 64, InlineLane.Instance, CancellationToken.None);
        Assert.Equal(1, other.MergedRequests);
        Assert.Equal(1, coalescer.ActiveKeys); // the busy key; the other one's queue is gone
        release.SetResult();

        var one = await first;
        var rest = await Task.WhenAll(waiting);
        Assert.Equal(1, one.MergedRequests);
        Assert.All(rest, r => Assert.Equal(3, r.MergedRequests));
        Assert.Equal(new long[] { 1, 1, 2 + 3 + 4 }, passes.Order().ToArray()); // three passes, not five
        for (var i = 0; i < rest.Length; i++)
        {
            var v = i + 2;
            using var y = rest[i].Output.ToTensor(CPU);
            Assert.Equal(new long[] { v, 4 }, y.shape);
            Assert.True(y.eq(2f * v).all().item<bool>());
        }
        // The queue is removed when its last waiting requests have been served.
        for (var i = 0; i < 50 && coalescer.ActiveKeys > 0; i++) await Task.Delay(20);
        Assert.Equal(0, coalescer.ActiveKeys);

        // A key used again after removal works as before.
        var again = await coalescer.RunAsync("m/0", Request(5, 2), Pass, 64, InlineLane.Instance, CancellationToken.None);
        using var z = again.Output.ToTensor(CPU);
        Assert.True(z.eq(10f).all().item<bool>());
    }
}
