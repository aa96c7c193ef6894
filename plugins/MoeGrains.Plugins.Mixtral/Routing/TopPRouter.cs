using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Routing;

/// <summary>
/// Top-p dynamic routing ("Harder Tasks Need More Experts", An et al.): each token keeps its most probable experts up to
/// and including the first whose cumulative probability exceeds p (<c>top_p_threshold</c>, default 0.4), at most
/// <c>top_p_max_experts</c> (default all). Weights are the raw probabilities, not renormalised, as in the authors' code,
/// so a confident token uses one expert and an uncertain one several.
/// </summary>
[Router("topp", Description = "Top-p dynamic routing: the smallest set of experts whose probability exceeds p")]
public sealed class TopPRouter : IRouter, IStateDict
{
    public const double DEFAULT_THRESHOLD = 0.4;

    private readonly RouterGate _gate;
    private readonly double _p;
    private readonly int _max;

    public TopPRouter(PluginContext context)
    {
        _gate = new RouterGate(context);
        _p = context.GetDouble("top_p_threshold", DEFAULT_THRESHOLD);
        _max = context.GetInt("top_p_max_experts", _gate.Experts);
        if (!(_p > 0 && _p <= 1) || _max < 1 || _max > _gate.Experts)
        {
            throw new ArgumentOutOfRangeException(nameof(context), $"top_p_threshold must be in (0, 1] and top_p_max_experts in 1..{_gate.Experts}.");
        }
        Descriptor = new RouterDescriptor("topp", _gate.Experts, _max) { Description = $"top-p {_p}" };
    }

    public RouterDescriptor Descriptor { get; }

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        using var scope = NewDisposeScope();
        var probs = _gate.Probabilities(hiddenStates, available);
        var k = Math.Min(_max, available.AvailableCount);
        var (values, indices) = probs.topk(k, dim: 1);
        var before = values.cumsum(1).sub(values); // mass of the experts ranked above
        using TorchSharp.Scalar p = _p;
        var keep = before.le(p).logical_and(values.gt(Scalars.Zero));
        var experts = indices.masked_fill(keep.logical_not(), Scalars.MinusOne);
        var weights = values.masked_fill(keep.logical_not(), Scalars.Zero);
        return new RoutingDecision(experts.MoveToOuterDisposeScope(), weights.MoveToOuterDisposeScope());
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        yield return new("weight", _gate.Weight);
    }

    public void Dispose() => _gate.Dispose();
}
