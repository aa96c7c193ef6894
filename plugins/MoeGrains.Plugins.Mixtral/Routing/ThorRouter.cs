using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Routing;

/// <summary>
/// THOR's inference routing (Zuo et al., "Taming Sparsely Activated Transformer with Stochastic Experts"): no gate;
/// each token goes to one expert drawn uniformly at random among the available ones, weight 1 (<c>thor</c>, THOR's
/// inference level 0). <see cref="ThorSequenceRouter"/> draws one expert per sequence instead. The gate weight of the
/// checkpoint, if any, is not used. The draws come from the seed and the router's layer, so a run is reproducible.
/// </summary>
[Router("thor", Description = "THOR: a random expert per token (no gate)")]
public sealed class ThorRouter(PluginContext context) : ThorRouterBase(context, "thor", perSequence: false);

/// <summary>
/// THOR with one random expert per sequence (THOR's inference level 1): the expert is drawn when the router is
/// created from the seed, the layer and the setting <c>sequence_seed</c>. Marked per sequence, so hosts create one
/// instance per sequence with that sequence's seed (a decoder session, in process or through the cluster, passes it):
/// the same sequence seed draws the same experts wherever the router runs. Without the setting each instance draws anew.
/// </summary>
[Router("thor-seq", Description = "THOR: a random expert per sequence", PerSequence = true)]
public sealed class ThorSequenceRouter(PluginContext context) : ThorRouterBase(context, "thor-seq", perSequence: true);

public abstract class ThorRouterBase : IRouter
{
    private static int s_instances;
    private readonly Random _random;
    private readonly int _experts;
    private readonly int _sequenceExpert;
    private readonly bool _perSequence;

    protected ThorRouterBase(PluginContext context, string name, bool perSequence)
    {
        ArgumentNullException.ThrowIfNull(context);
        _experts = context.GetInt("num_local_experts");
        if (_experts < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(context), "num_local_experts must be positive.");
        }
        _perSequence = perSequence;
        // Per token: the seed and layer fix the draws. Per sequence: the sequence's seed (or, without one, each instance
        // draws anew, in a reproducible order).
        var sequence = !perSequence ? 0
            : context.Settings.ContainsKey(RouterAttribute.SequenceSeedSetting) ? context.GetInt(RouterAttribute.SequenceSeedSetting)
            : Interlocked.Increment(ref s_instances);
        var seed = unchecked((int)context.Seed * 7919 + context.Layer * 104729 + sequence * 15485863);
        _random = new Random(seed);
        _sequenceExpert = _random.Next(_experts);
        Descriptor = new RouterDescriptor(name, _experts, 1) { Description = perSequence ? "a random expert per sequence" : "a random expert per token" };
    }

    public RouterDescriptor Descriptor { get; }

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        ArgumentNullException.ThrowIfNull(hiddenStates);
        ArgumentNullException.ThrowIfNull(available);
        if (available.Count != _experts)
        {
            throw new ArgumentException($"Availability covers {available.Count} experts; this router has {_experts}.");
        }
        if (available.AvailableCount == 0)
        {
            throw new InvalidOperationException("No expert is available.");
        }
        var open = available.AsList().Select((a, i) => (a, i)).Where(p => p.a).Select(p => p.i).ToArray();
        var tokens = (int)hiddenStates.shape[0];
        var experts = new long[tokens];
        for (var t = 0; t < tokens; t++)
        {
            experts[t] = _perSequence
                ? (available.AsList()[_sequenceExpert] ? _sequenceExpert : open[_sequenceExpert % open.Length])
                : open[_random.Next(open.Length)];
        }
        return new RoutingDecision(tensor(experts, [tokens, 1], device: hiddenStates.device), ones(tokens, 1, ScalarType.Float32, hiddenStates.device));
    }

    public void Dispose() => GC.SuppressFinalize(this);
}
