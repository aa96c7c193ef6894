using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// The router of a MoE block: <c>weight</c> [experts, hidden] (Mixtral's <c>block_sparse_moe.gate.weight</c>) and, for
/// AdaMoE, <c>null_weight</c> [null experts, hidden] (AdaMoE's separate null gate), whose logits are appended after
/// the true experts'. Both live under <c>gate.</c>, so the router plugin receives both.
/// </summary>
public sealed class MoeGate : nn.Module<Tensor, Tensor>
{
    private readonly Parameter _weight;
    private readonly Parameter? _nullWeight;

    public MoeGate(long hidden, long experts, long nullExperts) : base(nameof(MoeGate))
    {
        _weight = new Parameter(empty(experts, hidden));
        register_parameter("weight", _weight);
        if (nullExperts > 0)
        {
            _nullWeight = new Parameter(empty(nullExperts, hidden));
            register_parameter("null_weight", _nullWeight);
        }
    }

    /// <summary>Router logits <c>[tokens, experts + null experts]</c>.</summary>
    public override Tensor forward(Tensor x)
    {
        if (_nullWeight is null)
        {
            return x.matmul(_weight.t());
        }
        using var scope = NewDisposeScope();
        return x.matmul(cat([_weight, _nullWeight], 0).t()).MoveToOuterDisposeScope();
    }
}
