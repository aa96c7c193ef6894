using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// Rotary position embedding in Mixtral's (GPT-NeoX) layout: the head's two halves form the rotated pairs,
/// <c>x·cos + rotate_half(x)·sin</c> with angles <c>position / theta^(2i/d)</c>. Angles are computed for the positions
/// asked, so a sliding KV cache may run past the trained length: only relative positions matter.
/// </summary>
public static class RotaryEmbedding
{
    /// <summary>Rotates <paramref name="x"/> <c>[batch, heads, tokens, head_dim]</c> whose first token sits at <paramref name="start"/>.</summary>
    public static Tensor Apply(Tensor x, long start, double theta)
    {
        using var scope = NewDisposeScope();
        var headDim = x.shape[^1];
        var tokens = x.shape[^2];
        // Scalars are held until their calls are done (a temporary one can be freed by the finalizer thread mid-call).
        using TorchSharp.Scalar zero = 0, two = 2, one = 1, dim = headDim, first = start, end = start + tokens;
        var invFreq = pow(theta, arange(zero, dim, two, ScalarType.Float64, x.device).div(dim)).reciprocal();
        var angles = outer(arange(first, end, one, ScalarType.Float64, x.device), invFreq);
        var emb = cat([angles, angles], -1);
        var cos = emb.cos().to_type(x.dtype);
        var sin = emb.sin().to_type(x.dtype);
        var half = headDim / 2;
        var rotated = cat([x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1);
        return x.mul(cos).add_(rotated.mul_(sin), Scalars.One).MoveToOuterDisposeScope();
    }
}
