using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Routing;

/// <summary>
/// AdaMoE routing (Zeng et al.): the gate scores the n true experts (<c>weight</c> [n, d_model], Mixtral's gate) and m
/// null experts (<c>null_weight</c> [m, d_model], AdaMoE's second gate); softmax over all n + m, the k most probable
/// kept (k = <c>num_experts_per_tok</c>, AdaMoE's larger k). A null expert outputs zero, so it is never dispatched: its
/// slot is returned empty (-1, weight 0), and the chosen true experts' weights are renormalised to sum to one. A token
/// that chose only null experts computes no expert at all (its MoE output is zero; the residual path carries it).
/// </summary>
[Router("adamoe", Description = "AdaMoE: top-k over true and null experts; null experts are never called")]
public sealed class AdaMoERouter : IRouter, IStateDict
{
    public const int DEFAULT_NULL_EXPERTS = 16;

    private readonly Tensor _weight;
    private readonly Tensor _nullWeight;
    private readonly int _experts;
    private readonly int _nulls;
    private readonly int _k;

    public AdaMoERouter(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var dModel = context.GetInt("hidden_size");
        _experts = context.GetInt("num_local_experts");
        _k = context.GetInt("num_experts_per_tok");
        if (context.Weights is { } w)
        {
            _weight = context.GetWeight("weight", _experts, dModel).to(ScalarType.Float32, context.Device).detach().clone().DetachFromDisposeScope();
            if (!w.TryGetValue("null_weight", out var nullWeight) || nullWeight.dim() != 2 || nullWeight.shape[1] != dModel || nullWeight.shape[0] < 1)
            {
                _weight.Dispose();
                throw new ArgumentException($"Router '{context.Id}': the adamoe router needs 'null_weight' [null experts, {dModel}] (a checkpoint trained with --router adamoe).");
            }
            _nullWeight = nullWeight.to(ScalarType.Float32, context.Device).detach().clone().DetachFromDisposeScope();
        }
        else
        {
            var nulls = context.GetInt("num_null_experts", DEFAULT_NULL_EXPERTS);
            var gen = new Generator((ulong)context.Seed);
            _weight = randn(new long[] { _experts, dModel }, generator: gen).mul_(1.0 / Math.Sqrt(dModel)).to(context.Device).DetachFromDisposeScope();
            _nullWeight = randn(new long[] { Math.Max(1, nulls), dModel }, generator: gen).mul_(1.0 / Math.Sqrt(dModel)).to(context.Device).DetachFromDisposeScope();
        }
        _nulls = (int)_nullWeight.shape[0];
        if (_k < 1 || _k > _experts + _nulls)
        {
            Dispose();
            throw new ArgumentOutOfRangeException(nameof(context), $"num_experts_per_tok must be in 1..{_experts + _nulls}, got {_k}.");
        }
        Descriptor = new RouterDescriptor("adamoe", _experts, _k) { Description = $"top-{_k} of {_experts} experts + {_nulls} null experts" };
    }

    public RouterDescriptor Descriptor { get; }

    /// <summary>The null experts in the gate.</summary>
    public int NullExperts => _nulls;

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        ArgumentNullException.ThrowIfNull(available);
        if (available.Count != _experts)
        {
            throw new ArgumentException($"Availability covers {available.Count} experts; this router has {_experts}.");
        }
        using var scope = NewDisposeScope();
        var logits = hiddenStates.to_type(ScalarType.Float32).matmul(cat([_weight, _nullWeight], 0).t());
        if (available.AvailableCount < available.Count)
        {
            // An unavailable true expert cannot be chosen; null experts are always available (they cost nothing).
            var mask = tensor(available.AsList().Select(a => !a).Concat(Enumerable.Repeat(false, _nulls)).ToArray(), device: logits.device);
            logits = logits.masked_fill(mask, Scalars.NegativeInfinity);
        }
        var probs = nn.functional.softmax(logits, 1);
        var (values, indices) = probs.topk(_k, dim: 1);
        using TorchSharp.Scalar trueExperts = (long)_experts, tiny = 1e-12;
        var isNull = indices.ge(trueExperts).logical_or(values.le(Scalars.Zero)); // a null expert, or an unavailable one that k reached
        var kept = values.masked_fill(isNull, Scalars.Zero);
        var weights = kept.div(kept.sum(1, keepdim: true).clamp_min(tiny));
        var experts = indices.masked_fill(isNull, Scalars.MinusOne);
        return new RoutingDecision(experts.MoveToOuterDisposeScope(), weights.MoveToOuterDisposeScope());
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        yield return new("weight", _weight);
        yield return new("null_weight", _nullWeight);
    }

    public void Dispose()
    {
        _weight.Dispose();
        _nullWeight?.Dispose();
    }
}
