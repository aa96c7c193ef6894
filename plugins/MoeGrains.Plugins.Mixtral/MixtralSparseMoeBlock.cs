using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// How one MoE block routed a batch: the router logits <c>[tokens, experts + null experts]</c> and the chosen columns
/// <c>[tokens, slots]</c> (-1: an empty slot, such as one top-p did not need; for AdaMoE a column at or past the
/// number of true experts is a null expert, which computes nothing).
/// </summary>
public sealed record MoeRouting(Tensor Logits, Tensor Chosen) : IDisposable
{
    public void Dispose()
    {
        Logits.Dispose();
        Chosen.Dispose();
    }
}

/// <summary>
/// The mixture-of-experts feed-forward block (Mixtral's <c>MixtralSparseMoeBlock</c>) under the configuration's
/// <c>router_policy</c>:
/// <list type="bullet">
/// <item><c>topk</c>: softmax router probabilities, each token to its k most probable experts, weights renormalised to sum to one (Mixtral);</item>
/// <item><c>topp</c>: the most probable experts up to and including the first whose cumulative probability exceeds
/// <c>top_p_threshold</c> (at most <c>top_p_max_experts</c>), raw probabilities as weights (An et al.);</item>
/// <item><c>adamoe</c>: softmax over the n true and m null experts, top-k over all n + m; the chosen true experts'
/// weights renormalised to sum to one, null experts add nothing and cost nothing (AdaMoE);</item>
/// <item><c>thor</c>: no gate; training: one expert drawn uniformly per block and forward pass for the whole batch;
/// evaluation: one expert drawn per token (THOR), weight 1.</item>
/// </list>
/// Tokens are grouped by expert, so each expert runs once per batch on its own tokens; empty and null slots are never dispatched.
/// </summary>
public sealed class MixtralSparseMoeBlock : nn.Module
{
    private readonly MoeGate gate;
    private readonly ModuleList<SwiGluMlp> experts;
    private readonly MixtralConfig _config;
    private Random _random;

    public MixtralSparseMoeBlock(MixtralConfig config, int layer = 0) : base(nameof(MixtralSparseMoeBlock))
    {
        _config = config;
        gate = new MoeGate(config.HiddenSize, config.NumLocalExperts, config.NumNullExperts);
        experts = nn.ModuleList(Enumerable.Range(0, config.NumLocalExperts).Select(_ => new SwiGluMlp(config.HiddenSize, config.IntermediateSize)).ToArray());
        _random = new Random(7919 * (layer + 1));
        RegisterComponents();
    }

    public int NumExperts => experts.Count;

    /// <summary>Reseeds the random expert choices of THOR (training and inference draws).</summary>
    public void Reseed(int seed) => _random = new Random(seed);

    /// <summary>Runs the block on <paramref name="x"/> <c>[tokens, hidden]</c>; returns the output and how it routed.</summary>
    public (Tensor Output, MoeRouting Routing) forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var tokens = x.shape[0];
        var n = experts.Count;
        var logits = gate.forward(x);
        Tensor chosen, dispatched, weights;
        switch (_config.RouterPolicy)
        {
            case RoutingPolicies.TopP:
            {
                var probs = nn.functional.softmax(logits, 1, ScalarType.Float32);
                var (values, indices) = probs.topk(_config.TopPMaxExperts ?? n, dim: 1);
                using Scalar p = _config.TopPThreshold; // scalars held across the calls (see Scalars)
                var drop = values.cumsum(1).sub(values).gt(p); // the mass ranked above already exceeds p
                chosen = dispatched = indices.masked_fill(drop, Scalars.MinusOne);
                weights = values.masked_fill(drop, Scalars.Zero);
                break;
            }
            case RoutingPolicies.AdaMoE:
            {
                var probs = nn.functional.softmax(logits, 1, ScalarType.Float32);
                var (values, indices) = probs.topk(_config.NumExpertsPerTok, dim: 1);
                using Scalar trueExperts = (long)n, tiny = 1e-12;
                var isNull = indices.ge(trueExperts);
                var kept = values.masked_fill(isNull, Scalars.Zero);
                weights = kept.div(kept.sum(1, keepdim: true).clamp_min(tiny)); // all-null tokens: weights 0, output 0
                chosen = indices;
                dispatched = indices.masked_fill(isNull, Scalars.MinusOne);
                break;
            }
            case RoutingPolicies.Thor:
            {
                if (training)
                {
                    chosen = full(tokens, 1, _random.Next(n), ScalarType.Int64, x.device);
                }
                else
                {
                    var draws = new long[tokens];
                    for (var t = 0; t < tokens; t++) draws[t] = _random.Next(n);
                    chosen = tensor(draws, [tokens, 1], device: x.device);
                }
                dispatched = chosen;
                weights = ones(tokens, 1, ScalarType.Float32, x.device);
                break;
            }
            default:
            {
                var probs = nn.functional.softmax(logits, 1, ScalarType.Float32);
                (weights, chosen) = probs.topk(_config.NumExpertsPerTok, dim: 1);
                weights = weights.div(weights.sum(1, keepdim: true));
                dispatched = chosen;
                break;
            }
        }
        var output = Dispatch(x, dispatched, weights.to_type(x.dtype));
        return (output.MoveToOuterDisposeScope(), new MoeRouting(logits.MoveToOuterDisposeScope(), chosen.MoveToOuterDisposeScope()));
    }

    /// <summary>Runs each expert once on its tokens and adds the weighted outputs; slots below 0 are skipped.</summary>
    private Tensor Dispatch(Tensor x, Tensor dispatched, Tensor weights)
    {
        var k = dispatched.shape[1];
        var flat = dispatched.flatten();
        using Scalar zero = 0L, stride = flat.shape[0], slotsPerToken = k; // held across the calls (see Scalars)
        var valid = flat.ge(zero).nonzero().flatten();
        var output = zeros(x.shape[0], x.shape[1], x.dtype, x.device);
        if (valid.shape[0] == 0)
        {
            return output;
        }
        // Sort the (token, slot) pairs by expert: one gather, one contiguous slice per expert, one scatter-add.
        var expertOfSlot = flat.index_select(0, valid);
        var order = expertOfSlot.mul(stride).add_(valid, Scalars.One).argsort(); // unique keys: a stable sort
        var slots = valid.index_select(0, order);
        var counts = expertOfSlot.bincount(null, experts.Count).cpu().data<long>().ToArray();
        var tokenOfSlot = slots.div(slotsPerToken, rounding_mode: RoundingMode.floor);
        var gathered = x.index_select(0, tokenOfSlot);
        var slotWeights = weights.flatten().index_select(0, slots).unsqueeze(1);
        var outputs = new List<Tensor>(experts.Count);
        long offset = 0;
        for (var e = 0; e < experts.Count; e++)
        {
            if (counts[e] > 0)
            {
                outputs.Add(experts[e].forward(gathered.narrow(0, offset, counts[e])));
            }
            offset += counts[e];
        }
        var combined = cat(outputs, 0).mul(slotWeights);
        return output.index_add(0, tokenOfSlot, combined, Scalars.One);
    }
}
