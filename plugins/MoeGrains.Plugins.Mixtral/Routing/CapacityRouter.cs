using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Routing;

/// <summary>
/// Top-k routing with a capacity per expert (Switch Transformer): an expert takes at most
/// <c>ceil(capacity_factor × tokens × k / experts)</c> slots of a batch (<c>capacity_factor</c>, default 1.25).
/// Overflow policy: slots are served in order of router probability across the batch (the most confident first); a
/// slot over its expert's capacity is dropped, and the token's surviving weights are renormalised; a token whose every
/// slot overflowed keeps only the residual path (its MoE output is zero).
/// </summary>
[Router("capacity", Description = "Top-k routing with a capacity factor: overflowing slots are dropped")]
public sealed class CapacityRouter : IRouter, IStateDict
{
    public const double DEFAULT_CAPACITY_FACTOR = 1.25;

    private readonly RouterGate _gate;
    private readonly int _k;
    private readonly double _factor;

    public CapacityRouter(PluginContext context)
    {
        _gate = new RouterGate(context);
        _k = context.GetInt("num_experts_per_tok");
        _factor = context.GetDouble("capacity_factor", DEFAULT_CAPACITY_FACTOR);
        if (_k < 1 || _k > _gate.Experts || !(_factor > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(context), $"num_experts_per_tok must be in 1..{_gate.Experts} and capacity_factor positive.");
        }
        Descriptor = new RouterDescriptor("capacity", _gate.Experts, _k) { Description = $"top-{_k}, capacity factor {_factor}" };
    }

    public RouterDescriptor Descriptor { get; }

    /// <summary>Slots one expert may take in a batch of <paramref name="tokens"/>.</summary>
    public int Capacity(long tokens) => (int)Math.Ceiling(_factor * tokens * _k / _gate.Experts);

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        float[] p;
        long[] idx;
        int tokens, k;
        using (var scope = NewDisposeScope())
        {
            var probs = _gate.Probabilities(hiddenStates, available);
            k = Math.Min(_k, available.AvailableCount);
            var (values, indices) = probs.topk(k, dim: 1);
            tokens = (int)values.shape[0];
            p = values.contiguous().data<float>().ToArray();
            idx = indices.contiguous().data<long>().ToArray();
        }
        var capacity = Capacity(tokens);
        var load = new int[_gate.Experts];
        var kept = new bool[p.Length];
        foreach (var slot in Enumerable.Range(0, p.Length).OrderByDescending(s => p[s]).ThenBy(s => s))
        {
            if (load[idx[slot]] < capacity)
            {
                load[idx[slot]]++;
                kept[slot] = true;
            }
        }
        var experts = new long[p.Length];
        var weights = new float[p.Length];
        for (var t = 0; t < tokens; t++)
        {
            float sum = 0;
            for (var j = 0; j < k; j++) sum += kept[t * k + j] ? p[t * k + j] : 0;
            for (var j = 0; j < k; j++)
            {
                var s = t * k + j;
                experts[s] = kept[s] ? idx[s] : -1;
                weights[s] = kept[s] ? p[s] / sum : 0;
            }
        }
        var device = hiddenStates.device;
        return new RoutingDecision(tensor(experts, [tokens, k], device: device), tensor(weights, [tokens, k], device: device));
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        yield return new("weight", _gate.Weight);
    }

    public void Dispose() => _gate.Dispose();
}
