using System.Diagnostics.Metrics;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Diagnostics;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Cluster;

/// <summary>
/// Continuous batching: layer requests that arrive while a pass is in flight share the next pass, and expert calls that
/// queue behind a busy device share one forward pass; each caller still gets exactly its own rows, or its own error.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class ContinuousBatchingTests(ClusterFixture fixture)
{
    [Fact]
    public async Task Queued_calls_share_one_forward_pass_and_each_gets_its_own_rows_or_its_own_error()
    {
        var expert = fixture.Cluster.GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Expert("tiny", 1, 3));
        var inputs = Enumerable.Range(0, 12).Select(i => randn(new long[] { 1 + (i * 5 % 17), fixture.Spec.DModel }, generator: new Generator((ulong)(100 + i)))).ToArray();
        // One at a time first: the reference rows.
        var single = new List<float[]>();
        foreach (var x in inputs)
        {
            single.Add((await expert.Forward(WireTensor.FromTensor(x), CancellationToken.None)).Output.ToTensor(CPU).data<float>().ToArray());
        }

        long largestBatch = 0;
        using var listener = new MeterListener();
        listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == MoeGrainsMetrics.MeterName && i.Name == "moegrains.expert.batch_calls") l.EnableMeasurementEvents(i); };
        listener.SetMeasurementEventCallback<long>((_, v, _, _) => { lock (listener) largestBatch = Math.Max(largestBatch, v); });
        listener.Start();

        // Hold the device's thread so that every call below queues; then let it go.
        var gate = new ManualResetEventSlim();
        var hold = DeviceLane.For("cpu").RunAsync(() => gate.Wait(TimeSpan.FromSeconds(1)));
        var nan = full(new long[] { 3, fixture.Spec.DModel }, float.NaN);
        var calls = inputs.Select(x => expert.Forward(WireTensor.FromTensor(x), CancellationToken.None)).ToList();
        var bad = expert.Forward(WireTensor.FromTensor(nan), CancellationToken.None);
        await Task.Delay(300);
        gate.Set();
        await hold;

        var results = await Task.WhenAll(calls);
        for (var i = 0; i < inputs.Length; i++)
        {
            var rows = results[i].Output.ToTensor(CPU);
            Assert.Equal(inputs[i].shape, rows.shape);
            var got = rows.data<float>().ToArray();
            for (var j = 0; j < got.Length; j++)
            {
                Assert.True(Math.Abs(got[j] - single[i][j]) <= 1e-5f * (1 + Math.Abs(single[i][j])), $"call {i}, value {j}: {got[j]} batched vs {single[i][j]} alone");
            }
        }
        var e = await Assert.ThrowsAsync<TensorValidationException>(() => bad);
        Assert.Contains("non-finite", e.Message, StringComparison.Ordinal);
        listener.RecordObservableInstruments();
        Assert.True(largestBatch > 1, $"the queued calls were not merged (largest batch {largestBatch})");
    }

    [Fact]
    public async Task Layer_requests_that_queue_share_a_pass_and_each_gets_its_own_rows_or_its_own_error()
    {
        var layer = fixture.Cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("tiny", 0));
        var inputs = Enumerable.Range(0, 10).Select(i => randn(new long[] { 2 + i, fixture.Spec.DModel }, generator: new Generator((ulong)(300 + i)))).ToArray();
        var alone = new List<float[]>();
        foreach (var x in inputs)
        {
            var r = await layer.Forward(new MoeLayerRequest(WireTensor.FromTensor(x)), CancellationToken.None);
            Assert.Equal(1, r.MergedRequests);
            alone.Add(r.Output.ToTensor(CPU).data<float>().ToArray());
        }

        // Hold the device's thread: the first request's pass stops at its first tensor step, the others queue behind it.
        var gate = new ManualResetEventSlim();
        var hold = DeviceLane.For("cpu").RunAsync(() => gate.Wait(TimeSpan.FromSeconds(1)));
        var calls = inputs.Select(x => layer.Forward(new MoeLayerRequest(WireTensor.FromTensor(x)), CancellationToken.None)).ToList();
        var bad = layer.Forward(new MoeLayerRequest(WireTensor.FromTensor(full(new long[] { 4, fixture.Spec.DModel }, float.NaN))), CancellationToken.None);
        await Task.Delay(300);
        gate.Set();
        await hold;

        var results = await Task.WhenAll(calls);
        Assert.Contains(results, r => r.MergedRequests > 1);
        for (var i = 0; i < inputs.Length; i++)
        {
            var got = results[i].Output.ToTensor(CPU);
            Assert.Equal(inputs[i].shape, got.shape);
            var values = got.data<float>().ToArray();
            for (var j = 0; j < values.Length; j++)
            {
                Assert.True(Math.Abs(values[j] - alone[i][j]) <= 1e-5f * (1 + Math.Abs(alone[i][j])), $"request {i}, value {j}: {values[j]} merged vs {alone[i][j]} alone");
            }
        }
        var e = await Assert.ThrowsAsync<TensorValidationException>(() => bad);
        Assert.Contains("non-finite", e.Message, StringComparison.Ordinal);
    }
}
