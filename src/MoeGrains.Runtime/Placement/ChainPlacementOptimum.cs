namespace MoeGrains.Placement;

/// <summary>
/// The proven optimum of a small placement problem whose traced transitions form a chain (each traced layer linked only to
/// the next, as in ExFlow's adjacent-layer traces or the Mixtral 0→7→15 counts), found by dynamic programming over every
/// balanced assignment of each layer. It certifies what <see cref="AffinityPlacementSolver"/> returns when CP-SAT cannot
/// close its bound in time. Memory budgets are not modelled: problems with budgets are refused.
/// </summary>
public static class ChainPlacementOptimum
{
    public const long DEFAULT_MAX_WORK = 200_000_000;

    /// <summary>
    /// The optimal plan, or null when the problem has budgets, is not a chain, or needs more than <paramref name="maxWork"/>
    /// elementary steps (about <c>configs^2 * experts</c> per transition).
    /// </summary>
    public static PlacementPlan? TrySolve(PlacementProblem problem, long maxWork = DEFAULT_MAX_WORK)
    {
        ArgumentNullException.ThrowIfNull(problem);
        var (experts, silos, layers) = (problem.Experts, problem.Silos, problem.Layers.Count);
        if (problem.HasBudgets || !IsChain(problem))
        {
            return null;
        }
        var configs = Count(experts, silos, problem.MinPerSilo, problem.MaxPerSilo);
        if (configs * (double)configs * experts * Math.Max(1, layers - 1) > maxWork)
        {
            return null;
        }
        var all = Enumerate(experts, silos, problem.MinPerSilo, problem.MaxPerSilo);
        // Silos are interchangeable here (no budgets): the first layer needs only one labelling of each partition.
        var first = all.Where(a => IsCanonical(a, silos)).ToList();
        var states = new List<int[]>[layers];
        states[0] = first;
        for (var i = 1; i < layers; i++) states[i] = all;

        var cost = new double[layers][];
        var back = new int[layers][];
        cost[0] = new double[first.Count];
        for (var i = 1; i < layers; i++)
        {
            var t = problem.Trace.Transitions[i - 1];
            var total = t.Total;
            cost[i] = new double[all.Count];
            back[i] = new int[all.Count];
            Array.Fill(cost[i], double.PositiveInfinity);
            var pull = new double[experts * silos];
            for (var k = 0; k < states[i - 1].Count; k++)
            {
                // pull[y, c]: transitions into expert y of the next layer from experts that configuration k puts on silo c.
                var a = states[i - 1][k];
                Array.Clear(pull);
                for (var x = 0; x < experts; x++)
                {
                    for (var y = 0; y < experts; y++) pull[y * silos + a[x]] += t.Counts[x * experts + y];
                }
                for (var m = 0; m < all.Count; m++)
                {
                    var b = all[m];
                    var same = 0.0;
                    for (var y = 0; y < experts; y++) same += pull[y * silos + b[y]];
                    var c = cost[i - 1][k] + total - same;
                    if (c < cost[i][m])
                    {
                        cost[i][m] = c;
                        back[i][m] = k;
                    }
                }
            }
        }
        var best = 0;
        for (var m = 1; m < cost[layers - 1].Length; m++)
        {
            if (cost[layers - 1][m] < cost[layers - 1][best]) best = m;
        }
        var assignment = new int[problem.Nodes];
        for (var i = layers - 1; i >= 0; i--)
        {
            states[i][best].CopyTo(assignment, i * experts);
            if (i > 0) best = back[i][best];
        }
        return new PlacementPlan(problem.Layers, experts, silos, assignment);
    }

    private static bool IsChain(PlacementProblem p)
    {
        var t = p.Trace.Transitions;
        if (t.Count != p.Layers.Count - 1)
        {
            return false;
        }
        for (var i = 0; i < t.Count; i++)
        {
            if (t[i].LayerFrom != p.Layers[i] || t[i].LayerTo != p.Layers[i + 1]) return false;
        }
        return true;
    }

    private static bool IsCanonical(int[] a, int silos)
    {
        var next = 0;
        foreach (var s in a)
        {
            if (s > next) return false;
            if (s == next) next++;
        }
        return next <= silos;
    }

    /// <summary>How many ways E experts go onto G silos with min..max each (a multinomial sum).</summary>
    private static double Count(int experts, int silos, int min, int max)
    {
        // ways[k] = number of assignments of k experts to the silos seen so far
        var ways = new double[experts + 1];
        ways[0] = 1;
        for (var c = 0; c < silos; c++)
        {
            var next = new double[experts + 1];
            for (var k = 0; k <= experts; k++)
            {
                if (ways[k] == 0) continue;
                for (var take = min; take <= max && k + take <= experts; take++) next[k + take] += ways[k] * Binomial(experts - k, take);
            }
            ways = next;
        }
        return ways[experts];
    }

    private static double Binomial(int n, int k)
    {
        var r = 1.0;
        for (var i = 1; i <= k; i++) r = r * (n - k + i) / i;
        return r;
    }

    private static List<int[]> Enumerate(int experts, int silos, int min, int max)
    {
        var result = new List<int[]>();
        var a = new int[experts];
        var count = new int[silos];
        Recurse(0);
        return result;

        void Recurse(int e)
        {
            if (e == experts)
            {
                if (count.All(n => n >= min)) result.Add((int[])a.Clone());
                return;
            }
            for (var c = 0; c < silos; c++)
            {
                if (count[c] >= max) continue;
                a[e] = c;
                count[c]++;
                Recurse(e + 1);
                count[c]--;
            }
        }
    }
}
