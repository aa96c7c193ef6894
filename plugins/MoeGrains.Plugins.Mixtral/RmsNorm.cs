using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>Root-mean-square layer norm (Mixtral's <c>MixtralRMSNorm</c>): <c>weight ⊙ x / sqrt(mean(x²) + eps)</c>.</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly double _eps;

    public RmsNorm(long size, double eps) : base(nameof(RmsNorm))
    {
        weight = new Parameter(ones(size));
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // The scalar is held until the call is done (a temporary one can be freed by the finalizer thread mid-call).
        using var eps = _eps.ToScalar();
        var variance = x.mul(x).mean([-1], keepdim: true); // not square(): its implicit exponent scalar
        return x.mul(variance.add_(eps, Scalars.One).rsqrt_()).mul(weight).MoveToOuterDisposeScope();
    }
}
