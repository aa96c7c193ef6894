using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Routing;

/// <summary>The gate every router here shares: Mixtral's <c>block_sparse_moe.gate.weight</c> (<c>weight</c> [experts, d_model]).</summary>
internal sealed class RouterGate : IDisposable
{
    private readonly Tensor _weight;

    public RouterGate(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var dModel = context.GetInt("hidden_size");
        Experts = context.GetInt("num_local_experts");
        _weight = context.Weights is null
            ? randn(new long[] { Experts, dModel }, generator: new Generator((ulong)context.Seed)).mul_(1.0 / Math.Sqrt(dModel)).to(context.Device).DetachFromDisposeScope()
            : context.GetWeight("weight", Experts, dModel).to(ScalarType.Float32, context.Device).detach().clone().DetachFromDisposeScope();
    }

    public int Experts { get; }

    public Tensor Weight => _weight;

    /// <summary>Softmax router probabilities <c>[tokens, experts]</c>, unavailable experts at exactly zero.</summary>
    public Tensor Probabilities(Tensor hidden, ExpertAvailability available)
    {
        ArgumentNullException.ThrowIfNull(available);
        if (available.Count != Experts)
        {
            throw new ArgumentException($"Availability covers {available.Count} experts; this router has {Experts}.");
        }
        if (available.AvailableCount == 0)
        {
            throw new InvalidOperationException("No expert is available.");
        }
        using var scope = NewDisposeScope();
        var logits = hidden.to_type(ScalarType.Float32).matmul(_weight.t());
        if (available.AvailableCount < available.Count)
        {
            logits = logits.masked_fill(tensor(available.AsList().Select(a => !a).ToArray(), device: logits.device), Scalars.NegativeInfinity);
        }
        return nn.functional.softmax(logits, 1).MoveToOuterDisposeScope();
    }

    public void Dispose() => _weight.Dispose();
}
