using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.SwiGlu;

/// <summary>
/// Mixtral's feed-forward expert: <c>w2(silu(x w1ᵀ) ⊙ x w3ᵀ)</c>, with weights <c>w1.weight</c> [d_ff, d_model],
/// <c>w3.weight</c> [d_ff, d_model] and <c>w2.weight</c> [d_model, d_ff].
/// </summary>
[Expert("swiglu", Description = "SwiGLU feed-forward expert (Mixtral's w1/w2/w3)")]
public sealed class SwiGluExpert : IExpert, IStateDict
{
    private readonly Tensor _w1;
    private readonly Tensor _w2;
    private readonly Tensor _w3;

    public SwiGluExpert(PluginContext context, ILogger<SwiGluExpert> logger)
    {
        ArgumentNullException.ThrowIfNull(context);
        var dModel = context.GetInt("hidden_size");
        var dFf = context.GetInt("intermediate_size");
        if (context.Weights is null)
        {
            var gen = new Generator((ulong)context.Seed);
            _w1 = Init(dFf, dModel, gen, context.Device);
            _w3 = Init(dFf, dModel, gen, context.Device);
            _w2 = Init(dModel, dFf, gen, context.Device);
        }
        else
        {
            _w1 = CopyWeight(context, "w1.weight", dFf, dModel);
            _w3 = CopyWeight(context, "w3.weight", dFf, dModel);
            _w2 = CopyWeight(context, "w2.weight", dModel, dFf);
        }
        Descriptor = new ExpertDescriptor("swiglu", ExpertKind.FeedForward, dModel, dModel, 3L * dModel * dFf * 4, "float32");
        logger.LogDebug("SwiGLU expert {Id}: d_model {DModel}, d_ff {DFf}", context.Id, dModel, dFf);
    }

    public ExpertDescriptor Descriptor { get; }

    // Every step of the copy makes a new tensor object. The scope holds them until the copy exists, then frees them: left
    // to the finalizer, a temporary can be freed by the GC's finalizer thread while libtorch is still reading it.
    private static Tensor CopyWeight(PluginContext context, string name, long rows, long cols)
    {
        using var scope = NewDisposeScope();
        return context.GetWeight(name, rows, cols).to(ScalarType.Float32, context.Device).detach().clone().DetachFromDisposeScope();
    }

    private static Tensor Init(long rows, long cols, Generator gen, Device device)
    {
        using var scope = NewDisposeScope();
        return randn(new[] { rows, cols }, generator: gen).mul_(1.0 / Math.Sqrt(cols)).to(device).DetachFromDisposeScope();
    }

    public Tensor Forward(Tensor hiddenStates)
    {
        using var scope = NewDisposeScope();
        var x = hiddenStates.to_type(ScalarType.Float32);
        var gate = nn.functional.silu(x.matmul(_w1.t()));
        var up = x.matmul(_w3.t());
        return gate.mul_(up).matmul(_w2.t()).MoveToOuterDisposeScope();
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        yield return new("w1.weight", _w1);
        yield return new("w2.weight", _w2);
        yield return new("w3.weight", _w3);
    }

    public void Dispose()
    {
        _w1.Dispose();
        _w2.Dispose();
        _w3.Dispose();
    }
}
