using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// The mixture-of-experts feed-forward block (Mixtral's <c>MixtralSparseMoeBlock</c>): the router <c>gate</c> gives
/// softmax probabilities over the experts, each token goes to its k most probable, whose weights are renormalised to
/// sum to one, and the experts' outputs are combined with those weights. Tokens are grouped by expert, so each
/// expert runs once per batch on its own tokens.
/// </summary>
public sealed class MixtralSparseMoeBlock : nn.Module
{
    private readonly Linear gate;
    private readonly ModuleList<SwiGluMlp> experts;
    private readonly int _topK;

    public MixtralSparseMoeBlock(MixtralConfig config) : base(nameof(MixtralSparseMoeBlock))
    {
        _topK = config.NumExpertsPerTok;
        gate = nn.Linear(config.HiddenSize, config.NumLocalExperts, hasBias: false);
        experts = nn.ModuleList(Enumerable.Range(0, config.NumLocalExperts).Select(_ => new SwiGluMlp(config.HiddenSize, config.IntermediateSize)).ToArray());
        RegisterComponents();
    }

    public int NumExperts => experts.Count;

    /// <summary>Runs the block on <paramref name="x"/> <c>[tokens, hidden]</c>; returns the output and the router logits <c>[tokens, experts]</c>.</summary>
    public (Tensor Output, Tensor RouterLogits) forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var tokens = x.shape[0];
        var logits = gate.forward(x);
        var probs = nn.functional.softmax(logits, 1, ScalarType.Float32);
        var (weights, chosen) = probs.topk(_topK, dim: 1);
        weights = weights.div(weights.sum(1, keepdim: true)).to_type(x.dtype);

        // Sort the (token, slot) pairs by expert: one gather, one contiguous slice per expert, one scatter-add.
        var flatExperts = chosen.flatten();
        var slotsCount = flatExperts.shape[0];
        var order = flatExperts.mul(slotsCount).add_(arange(slotsCount, ScalarType.Int64, x.device)).argsort(); // unique keys: a stable sort
        var counts = flatExperts.bincount(null, experts.Count).cpu().data<long>().ToArray();
        var tokenOfSlot = order.div(_topK, rounding_mode: RoundingMode.floor);
        var gathered = x.index_select(0, tokenOfSlot);
        var slotWeights = weights.flatten().index_select(0, order).unsqueeze(1);
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
        var output = zeros(tokens, x.shape[1], x.dtype, x.device).index_add(0, tokenOfSlot, combined, 1);
        return (output.MoveToOuterDisposeScope(), logits.MoveToOuterDisposeScope());
    }
}
