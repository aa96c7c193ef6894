namespace MoeGrains.Dispatch;

/// <summary>The tokens of a batch routed to one expert, with the router's weight for each.</summary>
public sealed record ExpertGroup(int Expert, long[] Tokens, float[] Weights)
{
    /// <summary>Groups a flattened routing (<c>experts[t * k + j]</c>, -1 unused) by expert, in expert order.</summary>
    public static ExpertGroup[] FromRouting(int[] experts, float[] weights, int tokens, int k, int numExperts)
    {
        var tokenLists = new List<long>[numExperts];
        var weightLists = new List<float>[numExperts];
        for (var t = 0; t < tokens; t++)
        {
            for (var j = 0; j < k; j++)
            {
                var e = experts[t * k + j];
                if (e < 0)
                {
                    continue;
                }
                if (e >= numExperts)
                {
                    throw new Contracts.UnknownExpertException($"The router chose expert {e}, but the layer has {numExperts}.");
                }
                (tokenLists[e] ??= []).Add(t);
                (weightLists[e] ??= []).Add(weights[t * k + j]);
            }
        }
        var groups = new List<ExpertGroup>();
        for (var e = 0; e < numExperts; e++)
        {
            if (tokenLists[e] is { Count: > 0 } list)
            {
                groups.Add(new ExpertGroup(e, [.. list], [.. weightLists[e]]));
            }
        }
        return [.. groups];
    }
}
