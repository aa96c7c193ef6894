namespace MoeGrains.Dispatch;

/// <summary>
/// The tokens of a batch routed to one expert, with the router's weight for each; with hot-expert replication, the share
/// of them one replica of the expert runs.
/// </summary>
public sealed record ExpertGroup(int Expert, long[] Tokens, float[] Weights, int Replica = 0)
{
    /// <summary>
    /// Splits each expert's group over its replicas (<paramref name="replicas"/>[e], 1 or missing: not replicated):
    /// contiguous, near-equal chunks in token order, chunk c going to replica <c>(c + rotation) mod R</c>, empty chunks
    /// left out. Every token keeps its expert and weight, so the combined output does not depend on the split; the
    /// rotation spreads steps with fewer tokens than replicas (one decoded token) over the replicas.
    /// </summary>
    public static ExpertGroup[] SplitOverReplicas(ExpertGroup[] groups, IReadOnlyList<int>? replicas, int rotation)
    {
        ArgumentNullException.ThrowIfNull(groups);
        if (replicas is null)
        {
            return groups;
        }
        var result = new List<ExpertGroup>(groups.Length);
        foreach (var g in groups)
        {
            var r = g.Expert < replicas.Count ? replicas[g.Expert] : 1;
            if (r <= 1)
            {
                result.Add(g);
                continue;
            }
            var n = g.Tokens.Length;
            for (var c = 0; c < r; c++)
            {
                var from = (int)((long)c * n / r);
                var to = (int)((long)(c + 1) * n / r);
                if (to == from) continue;
                var replica = (int)(((long)c + (uint)rotation) % r);
                result.Add(new ExpertGroup(g.Expert, g.Tokens[from..to], g.Weights[from..to], replica));
            }
        }
        return [.. result];
    }

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
