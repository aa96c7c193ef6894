using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Routing;

/// <summary>
/// Rank-k routing, SCMoE's weak activation (Shi et al., "Unchosen Experts Can Contribute Too"): each token goes to one
/// expert only, the one at 0-based rank <c>rank_k</c> (default 1: the second most probable) of the router's sorted
/// probabilities, with weight 1.
/// </summary>
[Router("rank", Description = "Rank-k routing (SCMoE weak activation): the single expert at a given rank, weight 1")]
public sealed class RankRouter : IRouter, IStateDict
{
    public const int DEFAULT_RANK = 1;

    private readonly RouterGate _gate;
    private readonly int _rank;

    public RankRouter(PluginContext context)
    {
        _gate = new RouterGate(context);
        _rank = context.GetInt("rank_k", DEFAULT_RANK);
        if (_rank < 0 || _rank >= _gate.Experts)
        {
            throw new ArgumentOutOfRangeException(nameof(context), $"rank_k must be in 0..{_gate.Experts - 1}, got {_rank}.");
        }
        Descriptor = new RouterDescriptor("rank", _gate.Experts, 1) { Description = $"rank {_rank}" };
    }

    public RouterDescriptor Descriptor { get; }

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        using var scope = NewDisposeScope();
        var probs = _gate.Probabilities(hiddenStates, available);
        var rank = Math.Min(_rank, available.AvailableCount - 1); // never an unavailable expert
        var indices = probs.topk(rank + 1, dim: 1).indexes.narrow(1, rank, 1);
        return new RoutingDecision(indices.MoveToOuterDisposeScope(), ones(indices.shape[0], 1, ScalarType.Float32, indices.device).MoveToOuterDisposeScope());
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        yield return new("weight", _gate.Weight);
    }

    public void Dispose() => _gate.Dispose();
}
