using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Cluster;

[Collection(ClusterCollection.Name)]
public sealed class DistributedLayerTests(ClusterFixture fixture)
{
    private IMoeLayerGrain Layer(int layer, string model = "tiny") => fixture.Cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer(model, layer));

    private static float MaxRelativeError(Tensor a, Tensor b) => (a - b).abs().max().item<float>() / Math.Max(b.abs().max().item<float>(), 1e-12f);

    [Fact]
    public async Task The_distributed_layer_equals_the_local_one_and_runs_on_several_silos()
    {
        manual_seed(11);
        using var hidden = randn(64, fixture.Spec.DModel);
        using var local = new LocalMoeModel(TinyModel.BuiltIn(), fixture.CheckpointPath, TinyModel.Services, name: "tiny");
        for (var layer = 0; layer < fixture.Spec.Layers; layer++)
        {
            using var expected = await local.ForwardLayerAsync(layer, hidden);
            var result = await Layer(layer).Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)));
            using var actual = result.Output.ToTensor();
            Assert.True(MaxRelativeError(actual, expected.Output) <= 1e-5, $"layer {layer}: relative error {MaxRelativeError(actual, expected.Output)}");
            Assert.Equal(expected.Calls.Length, result.Messages); // one message per chosen expert
            Assert.True(result.Calls.Select(c => c.Silo).Distinct().Count() > 1, "all experts ran on one silo");
            Assert.True(result.CrossSiloBytes > 0);
            Assert.Empty(result.FailedExperts);
        }
    }

    [Fact]
    public async Task Experts_report_their_silo_and_device()
    {
        var silos = new HashSet<string>();
        for (var e = 0; e < fixture.Spec.Experts; e++)
        {
            var info = await fixture.Cluster.GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Expert("tiny", 0, e)).Describe();
            Assert.Equal("swiglu", info.Plugin);
            Assert.Equal("cpu", info.Device);
            Assert.Equal(3L * 32 * 64 * 4, info.ParameterBytes);
            silos.Add(info.Silo);
        }
        Assert.Equal(3, silos.Count);
        var devices = await fixture.Cluster.GrainFactory.GetGrain<IClusterInfoGrain>(0).Silos();
        Assert.Equal(3, devices.Length);
        Assert.All(devices, d => { Assert.Equal("cpu", d.Device); Assert.True(d.MemoryBudgetBytes > 0); });
    }

    [Fact]
    public async Task Masked_experts_are_never_called_and_the_output_matches_the_masked_local_layer()
    {
        manual_seed(12);
        using var hidden = randn(32, fixture.Spec.DModel);
        using var local = new LocalMoeModel(TinyModel.BuiltIn(), fixture.CheckpointPath, TinyModel.Services, name: "tiny");
        using var expected = await local.ForwardLayerAsync(0, hidden, masked: [1, 5]);
        var result = await Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)) { MaskedExperts = [1, 5] });
        Assert.DoesNotContain(result.Calls, c => c.Expert is 1 or 5);
        using var actual = result.Output.ToTensor();
        Assert.True(MaxRelativeError(actual, expected.Output) <= 1e-5);
    }

    [Fact]
    public async Task Half_precision_on_the_wire_stays_close_to_float32()
    {
        manual_seed(13);
        using var hidden = randn(16, fixture.Spec.DModel);
        var full = await Layer(1).Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)));
        var half = await Layer(1).Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden, TensorDType.BFloat16)));
        Assert.Equal(TensorDType.BFloat16, half.Output.DType);
        using var a = full.Output.ToTensor();
        using var b = half.Output.ToTensor();
        Assert.True(MaxRelativeError(b, a) < 0.05, $"bf16 error {MaxRelativeError(b, a)}");
        Assert.True(half.CrossSiloBytes < full.CrossSiloBytes * 0.6);
    }

    [Fact]
    public async Task Bad_requests_get_typed_errors_and_the_cluster_keeps_serving()
    {
        using var wrongWidth = randn(4, fixture.Spec.DModel + 1);
        var e1 = await Assert.ThrowsAsync<TensorValidationException>(() => Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(wrongWidth))));
        Assert.Contains($"[tokens, {fixture.Spec.DModel}]", e1.Message);

        using var nan = full(new long[] { 2, fixture.Spec.DModel }, float.NaN);
        var e2 = await Assert.ThrowsAsync<TensorValidationException>(() => Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(nan))));
        Assert.Contains("non-finite", e2.Message);

        using var ok = randn(3, fixture.Spec.DModel);
        await Assert.ThrowsAsync<UnknownExpertException>(() => Layer(0, "no-such-model").Forward(new MoeLayerRequest(WireTensor.FromTensor(ok))));
        await Assert.ThrowsAsync<UnknownExpertException>(() => Layer(99).Forward(new MoeLayerRequest(WireTensor.FromTensor(ok))));
        await Assert.ThrowsAsync<UnknownExpertException>(() => Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(ok)) { MaskedExperts = [1000] }));
        await Assert.ThrowsAsync<TensorValidationException>(() => Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(ok)) { KMin = 0 }));

        var sw = System.Diagnostics.Stopwatch.StartNew();
        var unknown = Enumerable.Range(100, 1000).Select(e => fixture.Cluster.GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Expert("tiny", 0, e)).Describe());
        foreach (var call in unknown)
        {
            await Assert.ThrowsAsync<UnknownExpertException>(() => call);
        }
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(30));

        var good = await Layer(0).Forward(new MoeLayerRequest(WireTensor.FromTensor(ok)));
        Assert.Equal(new long[] { 3, fixture.Spec.DModel }, good.Output.Shape);
    }
}
