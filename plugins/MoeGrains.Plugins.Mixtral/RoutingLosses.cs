using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>The auxiliary losses of the trained routing policies, over all layers' routing of a batch.</summary>
public static class RoutingLosses
{
    /// <summary>
    /// Switch-style balance over every gate column (n true + m null experts): <c>(n+m) · Σ_i (c_i / T) · P_i</c>, where
    /// <c>c_i</c> counts the slots that chose column i (empty slots, -1, count for nothing, so top-p's variable number of
    /// experts is covered), <c>T</c> the tokens and <c>P_i</c> the mean router probability. With <paramref name="nullExperts"/>
    /// > 0 the null experts' counts are replaced by their mean (AdaMoE's group balance: the average use of null experts is
    /// balanced, not each token's). For top-k with even load it equals k.
    /// </summary>
    public static Tensor Balance(IReadOnlyList<MoeRouting> routing, int experts, int nullExperts)
    {
        using var scope = NewDisposeScope();
        var logits = cat([.. routing.Select(r => r.Logits)], 0);
        var chosen = cat([.. routing.Select(r => r.Chosen)], 0);
        var columns = logits.shape[1];
        if (columns != experts + nullExperts)
        {
            throw new ArgumentException($"The router has {columns} columns, not {experts} experts + {nullExperts} null experts.");
        }
        var probs = nn.functional.softmax(logits, 1, ScalarType.Float32);
        var valid = chosen.ge(0).unsqueeze(-1).to_type(ScalarType.Float32);
        var counts = nn.functional.one_hot(chosen.clamp_min(0), columns).to_type(ScalarType.Float32).mul(valid).sum([0, 1]);
        if (nullExperts > 0)
        {
            counts = cat([counts.narrow(0, 0, experts), counts.narrow(0, experts, nullExperts).mean().expand(nullExperts)], 0);
        }
        var fraction = counts.div(logits.shape[0]);
        return fraction.mul(probs.mean([0])).sum().mul(columns).MoveToOuterDisposeScope();
    }

    /// <summary>The dynamic loss of top-p routing: the router's entropy <c>−Σ_i P_i log P_i</c>, averaged over tokens and layers.</summary>
    public static Tensor Entropy(IReadOnlyList<MoeRouting> routing)
    {
        using var scope = NewDisposeScope();
        var logits = cat([.. routing.Select(r => r.Logits)], 0);
        var logp = nn.functional.log_softmax(logits.to_type(ScalarType.Float32), 1);
        return logp.exp().mul(logp).sum(1).mean().neg().MoveToOuterDisposeScope();
    }

    /// <summary>THOR's consistency term: <c>½ Σ_v (p₁ − p₂)(log p₁ − log p₂)</c> per token, averaged over tokens.</summary>
    public static Tensor SymmetricKl(Tensor logits1, Tensor logits2)
    {
        using var scope = NewDisposeScope();
        var v = logits1.shape[^1];
        var l1 = nn.functional.log_softmax(logits1.reshape(-1, v).to_type(ScalarType.Float32), 1);
        var l2 = nn.functional.log_softmax(logits2.reshape(-1, v).to_type(ScalarType.Float32), 1);
        return l1.exp().sub(l2.exp()).mul(l1.sub(l2)).sum(1).mean().mul(0.5).MoveToOuterDisposeScope();
    }
}
