namespace MoeGrains.Placement;

/// <summary>
/// Where an expert goes when no plan covers it. The candidate silos are the GPU silos when the cluster has any (the
/// director filters them), in address order. Each layer's experts are spread over them in proportion to the memory
/// budget each silo advertises (<see cref="Devices.SiloDevice.MemoryKey"/>): a silo with twice the budget holds twice
/// the experts of every layer. With equal (or unknown) budgets this is round-robin, expert <c>e</c> of layer <c>l</c> on
/// silo <c>(e + l) mod n</c>; the layer offset keeps consecutive layers' expert 0 off the same silo.
/// </summary>
public static class DefaultExpertPlacement
{
    /// <param name="budgets">Memory budget per candidate silo, in the director's order; 0 or less: unknown.</param>
    public static int SiloIndex(int layer, int expert, int experts, IReadOnlyList<long> budgets)
    {
        ArgumentNullException.ThrowIfNull(budgets);
        var n = budgets.Count;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(n);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(experts);
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfNegative(expert);
        var known = budgets.Where(b => b > 0).ToArray();
        if (known.Length < n || known.Distinct().Count() == 1)
        {
            return (expert + layer) % n;
        }
        var sequence = Sequence(Quotas(experts, budgets));
        return sequence[(expert + layer) % experts];
    }

    /// <summary>Experts per layer per silo: proportional to the budgets, largest remainders first (ties: lower index).</summary>
    public static int[] Quotas(int experts, IReadOnlyList<long> budgets)
    {
        var total = budgets.Sum(b => (double)Math.Max(b, 0));
        var exact = budgets.Select(b => total > 0 ? experts * Math.Max(b, 0) / total : (double)experts / budgets.Count).ToArray();
        var quotas = exact.Select(x => (int)Math.Floor(x)).ToArray();
        var left = experts - quotas.Sum();
        foreach (var c in Enumerable.Range(0, budgets.Count).OrderByDescending(c => exact[c] - quotas[c]).ThenBy(c => c).Take(left))
        {
            quotas[c]++;
        }
        return quotas;
    }

    // Smooth weighted round-robin: each silo appears quota times, spread out (not in blocks).
    private static int[] Sequence(int[] quotas)
    {
        var total = quotas.Sum();
        var current = new long[quotas.Length];
        var sequence = new int[total];
        for (var i = 0; i < total; i++)
        {
            var best = 0;
            for (var c = 0; c < quotas.Length; c++)
            {
                current[c] += quotas[c];
                if (current[c] > current[best]) best = c;
            }
            sequence[i] = best;
            current[best] -= total;
        }
        return sequence;
    }
}
