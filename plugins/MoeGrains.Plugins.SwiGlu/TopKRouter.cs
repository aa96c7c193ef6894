using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.SwiGlu;

/// <summary>
/// Mixtral's router: logits <c>x gateᵀ</c> (<c>weight</c> [experts, d_model]), softmax over the available experts,
/// the k largest kept and renormalised to sum to one. k is <c>num_experts_per_tok</c>, capped by how many are available.
/// </summary>
[Router("topk", Description = "Top-k softmax router (Mixtral's gate)")]
public sealed class TopKRouter : IRouter, IStateDict
{
    private readonly Tensor _gate;
    private readonly int _k;

    public TopKRouter(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var dModel = context.GetInt("hidden_size");
        var experts = context.GetInt("num_local_experts");
        _k = context.GetInt("num_experts_per_tok");
        if (_k < 1 || _k > experts)
        {
            throw new ArgumentOutOfRangeException(nameof(context), $"num_experts_per_tok must be in 1..{experts}, got {_k}.");
        }
        // The scope holds the temporaries of the copy until it exists (see SwiGluExpert.CopyWeight), then frees them.
        using (NewDisposeScope())
        {
            _gate = context.Weights is null
                ? randn(new long[] { experts, dModel }, generator: new Generator((ulong)context.Seed)).mul_(1.0 / Math.Sqrt(dModel)).to(context.Device).DetachFromDisposeScope()
                : context.GetWeight("weight", experts, dModel).to(ScalarType.Float32, context.Device).detach().clone().DetachFromDisposeScope();
        }
        Descriptor = new RouterDescriptor("topk", experts, _k);
    }

    public RouterDescriptor Descriptor { get; }

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        ArgumentNullException.ThrowIfNull(available);
        if (available.Count != Descriptor.NumExperts)
        {
            throw new ArgumentException($"Availability covers {available.Count} experts; this router has {Descriptor.NumExperts}.");
        }
        var k = Math.Min(_k, available.AvailableCount);
        if (k == 0)
        {
            throw new InvalidOperationException("No expert is available.");
        }
        using var scope = NewDisposeScope();
        var logits = hiddenStates.to_type(ScalarType.Float32).matmul(_gate.t());
        if (available.AvailableCount < available.Count)
        {
            var mask = tensor(available.AsList().Select(a => !a).ToArray(), device: logits.device);
            logits = logits.masked_fill(mask, Scalars.NegativeInfinity);
        }
        var probs = nn.functional.softmax(logits, 1);
        var (values, indices) = probs.topk(k, dim: 1);
        var weights = values.div(values.sum(1, keepdim: true));
        return new RoutingDecision(indices.MoveToOuterDisposeScope(), weights.MoveToOuterDisposeScope());
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        yield return new("weight", _gate);
    }

    public void Dispose() => _gate.Dispose();
}
