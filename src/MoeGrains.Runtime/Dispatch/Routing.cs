using MoeGrains.Contracts;
using static TorchSharp.torch;

namespace MoeGrains.Dispatch;

public static class Routing
{
    /// <summary>Runs a router on a batch and flattens its decision for the wire, checking its invariants.</summary>
    public static RoutingResult Route(IRouter router, Tensor hidden, ExpertAvailability available)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var decision = router.Route(hidden, available);
        var tokens = (int)decision.Tokens;
        var k = (int)decision.K;
        var experts = decision.Experts.to_type(ScalarType.Int32).cpu().contiguous().data<int>().ToArray();
        var weights = decision.Weights.to_type(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
        for (var i = 0; i < experts.Length; i++)
        {
            var e = experts[i];
            if (e >= 0 && !available[e])
            {
                throw new ExpertFailedException($"Router '{router.Descriptor.Name}' chose expert {e}, which is not available.");
            }
            if (!float.IsFinite(weights[i]))
            {
                throw new ExpertFailedException($"Router '{router.Descriptor.Name}' produced a non-finite weight.");
            }
        }
        return new RoutingResult(tokens, k, experts, weights);
    }

    /// <summary>The availability mask for a layer of <paramref name="numExperts"/> with some experts masked out.</summary>
    public static ExpertAvailability Availability(int numExperts, IEnumerable<int>? masked)
    {
        var mask = Enumerable.Repeat(true, numExperts).ToArray();
        foreach (var e in masked ?? [])
        {
            if ((uint)e >= (uint)numExperts)
            {
                throw new UnknownExpertException($"Masked expert {e} does not exist (the layer has {numExperts}).");
            }
            mask[e] = false;
        }
        return new ExpertAvailability(mask);
    }
}
