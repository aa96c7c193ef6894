namespace MoeGrains.Generation;

/// <summary>
/// Picks the next token from logits: greedy (the first largest) at temperature 0, otherwise from
/// <c>softmax(logits / T)</c> restricted to the smallest set of most probable tokens whose mass reaches top-p (nucleus
/// sampling), with its own seeded random stream so that the same seed gives the same text wherever the logits come from.
/// </summary>
public sealed class TokenSampler(double temperature, double topP, long seed)
{
    private readonly Random _random = new(unchecked((int)(seed ^ (seed >> 32))));

    public int Next(ReadOnlySpan<float> logits)
    {
        if (logits.Length == 0)
        {
            throw new ArgumentException("No logits to sample from.", nameof(logits));
        }
        if (temperature == 0)
        {
            return ArgMax(logits);
        }
        var max = double.NegativeInfinity;
        foreach (var l in logits) max = Math.Max(max, l);
        var probs = new double[logits.Length];
        double sum = 0;
        for (var i = 0; i < logits.Length; i++)
        {
            probs[i] = Math.Exp((logits[i] - max) / temperature);
            sum += probs[i];
        }
        var order = Enumerable.Range(0, probs.Length).ToArray();
        Array.Sort(order, (a, b) => probs[b].CompareTo(probs[a]) is var c && c != 0 ? c : a.CompareTo(b));
        var kept = 0;
        double mass = 0;
        while (kept < order.Length && (kept == 0 || mass < topP * sum))
        {
            mass += probs[order[kept++]];
        }
        var u = _random.NextDouble() * mass;
        for (var i = 0; i < kept; i++)
        {
            u -= probs[order[i]];
            if (u <= 0)
            {
                return order[i];
            }
        }
        return order[kept - 1];
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        var best = 0;
        for (var i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best]) best = i;
        }
        return best;
    }
}
