using CsCheck;
using MoeGrains.Models;
using MoeGrains.Plugins;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Dispatch;

public sealed class RouterInvariantTests
{
    private static readonly PluginCatalog Catalog = TinyModel.BuiltIn();

    [Fact]
    public void Topk_router_weights_sum_to_one_k_is_bounded_and_masked_experts_are_never_chosen()
    {
        var gen = Gen.Select(Gen.Int[1, 8], Gen.Int[1, 4], Gen.Int[1, 40], Gen.Bool.Array[8], Gen.Int[0, 1000]);
        gen.Sample((experts, k, tokens, maskBits, seed) =>
        {
            k = Math.Min(k, experts);
            var mask = maskBits.Take(experts).ToArray();
            if (!mask.Any(m => m)) mask[seed % experts] = true;
            var spec = new ModelSpec("p", 1, experts, 16, 8, k, "swiglu", "topk");
            using var router = PluginFactory.CreateRouter(Catalog, spec, null, 0, CPU, TinyModel.Services, null, seed);
            using var scope = NewDisposeScope();
            manual_seed(seed);
            var hidden = randn(tokens, 16);
            var routing = MoeGrains.Dispatch.Routing.Route(router, hidden, new ExpertAvailability(mask));
            var expectedK = Math.Min(k, mask.Count(m => m));
            Assert.Equal(expectedK, routing.K);
            for (var t = 0; t < tokens; t++)
            {
                var chosen = routing.Experts.Skip(t * routing.K).Take(routing.K).ToArray();
                var weights = routing.Weights.Skip(t * routing.K).Take(routing.K).ToArray();
                Assert.All(chosen, e => Assert.True(mask[e], $"masked expert {e} chosen"));
                Assert.Equal(chosen.Length, chosen.Distinct().Count());
                Assert.All(weights, w => Assert.InRange(w, 0f, 1f));
                Assert.Equal(1.0, weights.Sum(), 5);
            }
        }, iter: 150);
    }
}
