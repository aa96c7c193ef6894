using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// One expert (Mixtral's <c>MixtralBlockSparseTop2MLP</c>): <c>w2(silu(w1 x) ⊙ w3 x)</c>, the same function as the
/// framework's <c>swiglu</c> expert plugin, so the expert grains serve these weights unchanged.
/// </summary>
public sealed class SwiGluMlp : nn.Module<Tensor, Tensor>
{
    private readonly Linear w1;
    private readonly Linear w2;
    private readonly Linear w3;

    public SwiGluMlp(long hidden, long intermediate) : base(nameof(SwiGluMlp))
    {
        w1 = nn.Linear(hidden, intermediate, hasBias: false);
        w2 = nn.Linear(intermediate, hidden, hasBias: false);
        w3 = nn.Linear(hidden, intermediate, hasBias: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return w2.forward(nn.functional.silu(w1.forward(x)).mul_(w3.forward(x))).MoveToOuterDisposeScope();
    }
}
