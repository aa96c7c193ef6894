using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// The Switch Transformer load-balancing loss as Mixtral computes it over all layers' router logits:
/// <c>E · Σ_e f_e · P_e</c>, where <c>f_e</c> is the fraction of routed slots that went to expert e (top-k, per token
/// slot) and <c>P_e</c> the mean router probability of e. It is k when the load is perfectly even.
/// </summary>
public static class LoadBalancingLoss
{
    public static Tensor Compute(IReadOnlyList<Tensor> routerLogits, int topK)
    {
        using var scope = NewDisposeScope();
        var logits = cat([.. routerLogits], 0);
        var experts = logits.shape[1];
        var probs = nn.functional.softmax(logits, 1, ScalarType.Float32);
        var chosen = probs.topk(topK, dim: 1).indexes;
        var slots = nn.functional.one_hot(chosen, experts).sum(1).to_type(ScalarType.Float32);
        var fraction = slots.mean([0]).div(topK);
        var meanProb = probs.mean([0]);
        return fraction.mul(meanProb).sum().mul(experts * topK).MoveToOuterDisposeScope();
    }
}
