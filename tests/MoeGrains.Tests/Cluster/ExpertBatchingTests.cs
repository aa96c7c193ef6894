using System.Diagnostics.Metrics;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Diagnostics;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Cluster;

/// <summary>
/// Continuous batching in the expert grain: calls that queue behind a busy device are served by one forward pass, and
/// each caller still gets exactly its own rows, or its own error.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class ExpertBatchingTests(ClusterFixture fixture)
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
}
