using MoeGrains.Diffusion;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Diffusion;

public sealed class EnsembleTests
{
    private static LocalDiffusionBackend ThreeExperts()
    {
        var settings = DiffusionTestData.Tiny(3).Settings;
        PluginContext Context(int k) => new() { Id = $"t/{k}", Index = k, Device = CPU, Settings = settings, Seed = 100 + k };
        var experts = Enumerable.Range(0, 3)
            .Select(k => DiffusionTestData.Plugins.Create<IDiffusionExpert>("conv-denoiser", PluginKind.DiffusionExpert, Context(k), DiffusionTestData.Services)).ToList();
        var router = DiffusionTestData.Plugins.Create<IDiffusionRouter>("partition-router", PluginKind.DiffusionRouter, Context(-1), DiffusionTestData.Services);
        return new LocalDiffusionBackend(experts, router, 8);
    }

    [Fact]
    public async Task The_mixture_of_flows_is_the_router_weighted_sum_of_the_experts_flows()
    {
        using var scope = NewDisposeScope();
        using var backend = ThreeExperts();
        var gen = new Generator(3);
        var x = randn([6, 1, 8, 8], generator: gen);
        var t = rand(6, generator: gen);
        var logits = await backend.RouterLogitsAsync(x, t);
        var w = nn.functional.softmax(logits, 1);
        var v = new List<Tensor>();
        for (var k = 0; k < 3; k++) v.Add(await backend.VelocityAsync(k, x, t));
        var expected = zeros_like(x);
        for (var k = 0; k < 3; k++) expected = expected.add(v[k].mul(w[.., k].reshape(-1, 1, 1, 1)));

        var full = new DiffusionEnsemble(backend);
        var mixed = await full.VelocityAsync(x, t, topK: 3);
        Assert.True(mixed.sub(expected).abs().max().item<float>() < 1e-5f);
        Assert.Equal(18, full.ExpertImageCalls);

        // top-1: each image gets exactly the flow of its most likely expert, and each expert only its own images.
        var top1 = new DiffusionEnsemble(backend);
        var one = await top1.VelocityAsync(x, t, topK: 1);
        var best = w.argmax(1).data<long>().ToArray();
        for (var i = 0; i < 6; i++) Assert.True(one[i].sub(v[(int)best[i]][i]).abs().max().item<float>() < 1e-5f);
        Assert.Equal(6, top1.ExpertImageCalls);

        // top-2: the two largest weights, renormalised to sum to one.
        var w2 = DiffusionEnsemble.Weights(logits, 2);
        Assert.True(w2.sum(1).sub(1).abs().max().item<float>() < 1e-6f);
        Assert.Equal(new long[] { 6, 6, 6, 6, 6, 6 }, w2.gt(0).sum(1).mul(3).data<long>().ToArray());
    }

    [Fact]
    public void Weights_refuse_a_k_below_one()
    {
        using var logits = zeros(2, 3);
        Assert.Throws<ArgumentOutOfRangeException>(() => DiffusionEnsemble.Weights(logits, 0));
    }
}
