using System.Diagnostics;

namespace MoeGrains.Placement;

/// <summary>
/// The fallback placement heuristic, and the solver's warm start: a greedy affinity construction, then swap and move
/// descent within each layer (balance and budgets kept at every step), then iterated local search from perturbed copies
/// of the best plan until the time or restart limit. Never returns a plan worse than the feasible starts it was given.
/// </summary>
internal static class AffinityLocalSearch
{
    private const double Epsilon = 1e-9;

    /// <returns>The best feasible plan found, or null when neither the starts nor the greedy construction were feasible.</returns>
    public static PlacementPlan? Solve(PlacementProblem problem, IEnumerable<PlacementPlan?> starts, TimeSpan timeLimit, int restarts, int seed,
        CancellationToken cancellationToken = default)
    {
        var clock = Stopwatch.StartNew();
        var random = new Random(seed);
        int[]? best = null;
        var bestCost = double.PositiveInfinity;
        foreach (var start in starts.Append(Greedy(problem)))
        {
            if (start is null || problem.Violation(start) is not null)
            {
                continue;
            }
            var state = new State(problem, (int[])start.Assignment.Clone());
            state.Descend();
            if (state.Cross < bestCost - Epsilon)
            {
                (best, bestCost) = ((int[])state.Assignment.Clone(), state.Cross);
            }
        }
        if (best is null)
        {
            return null;
        }
        for (var r = 0; r < restarts && clock.Elapsed < timeLimit && !cancellationToken.IsCancellationRequested; r++)
        {
            var state = new State(problem, (int[])best.Clone());
            state.Perturb(random, Math.Max(2, problem.Nodes / 8));
            state.Descend();
            if (state.Cross < bestCost - Epsilon)
            {
                (best, bestCost) = ((int[])state.Assignment.Clone(), state.Cross);
            }
        }
        return new PlacementPlan(problem.Layers, problem.Experts, problem.Silos, best);
    }

    /// <summary>
    /// Layer by layer, each expert (most attached first) goes to the open silo holding most of its traced neighbours.
    /// A silo is open while it has fewer than floor(E/G) of the layer's experts, or exactly that many and fewer than
    /// E mod G silos have taken an extra one; and while the expert fits its memory budget.
    /// </summary>
    public static PlacementPlan? Greedy(PlacementProblem p)
    {
        var assignment = Enumerable.Repeat(-1, p.Nodes).ToArray();
        var used = new long[p.Silos];
        var extra = p.Experts % p.Silos;
        for (var i = 0; i < p.Layers.Count; i++)
        {
            var count = new int[p.Silos];
            var atMax = 0;
            var pull = new double[p.Experts][];
            for (var e = 0; e < p.Experts; e++)
            {
                pull[e] = new double[p.Silos];
                foreach (var (m, w) in p.Neighbours[i * p.Experts + e])
                {
                    if (assignment[m] >= 0) pull[e][assignment[m]] += w;
                }
            }
            // Heavy attachments first, largest experts first when memory is tight.
            var order = Enumerable.Range(0, p.Experts)
                .OrderByDescending(e => pull[e].Max())
                .ThenByDescending(e => p.ExpertBytes?[i * p.Experts + e] ?? 0)
                .ThenBy(e => e);
            foreach (var e in order)
            {
                var n = i * p.Experts + e;
                var bytes = p.ExpertBytes?[n] ?? 0;
                var choice = -1;
                for (var c = 0; c < p.Silos; c++)
                {
                    var open = count[c] < p.MinPerSilo || (count[c] == p.MinPerSilo && atMax < extra);
                    var fits = !p.HasBudgets || used[c] + bytes <= p.SiloBudgetBytes![c];
                    if (!open || !fits) continue;
                    if (choice < 0 || pull[e][c] > pull[e][choice] + Epsilon
                        || (Math.Abs(pull[e][c] - pull[e][choice]) <= Epsilon && count[c] < count[choice]))
                    {
                        choice = c;
                    }
                }
                if (choice < 0)
                {
                    return null;
                }
                if (count[choice] == p.MinPerSilo) atMax++;
                count[choice]++;
                used[choice] += bytes;
                assignment[n] = choice;
            }
        }
        return new PlacementPlan(p.Layers, p.Experts, p.Silos, assignment);
    }

    /// <summary>A plan with, per node, the traced weight it shares with each silo, so a move or swap costs O(1) to price.</summary>
    private sealed class State
    {
        private readonly PlacementProblem _p;
        private readonly double[] _pull; // [node * silos + silo]: weight of the node's edges to neighbours on that silo
        private readonly int[] _count;   // [layer * silos + silo]
        private readonly long[] _used;

        public State(PlacementProblem problem, int[] assignment)
        {
            _p = problem;
            Assignment = assignment;
            _pull = new double[problem.Nodes * problem.Silos];
            _count = new int[problem.Layers.Count * problem.Silos];
            _used = problem.SiloBytes(new PlacementPlan(problem.Layers, problem.Experts, problem.Silos, assignment));
            for (var n = 0; n < problem.Nodes; n++)
            {
                _count[n / problem.Experts * problem.Silos + assignment[n]]++;
                foreach (var (m, w) in problem.Neighbours[n])
                {
                    _pull[n * problem.Silos + assignment[m]] += w;
                }
            }
            foreach (var e in problem.Edges)
            {
                if (assignment[e.A] != assignment[e.B]) Cross += e.Weight;
            }
        }

        public int[] Assignment { get; }

        /// <summary>Weight of the transitions that cross silos.</summary>
        public double Cross { get; private set; }

        private double MoveGain(int n, int to) => _pull[n * _p.Silos + Assignment[n]] - _pull[n * _p.Silos + to];

        private long Bytes(int n) => _p.ExpertBytes?[n] ?? 0;

        private bool Fits(int silo, long delta) => !_p.HasBudgets || delta <= 0 || _used[silo] + delta <= _p.SiloBudgetBytes![silo];

        private void Move(int n, int to)
        {
            var from = Assignment[n];
            Cross += MoveGain(n, to);
            foreach (var (m, w) in _p.Neighbours[n])
            {
                _pull[m * _p.Silos + from] -= w;
                _pull[m * _p.Silos + to] += w;
            }
            var layer = n / _p.Experts;
            _count[layer * _p.Silos + from]--;
            _count[layer * _p.Silos + to]++;
            _used[from] -= Bytes(n);
            _used[to] += Bytes(n);
            Assignment[n] = to;
        }

        private double Joined(int a, int b)
        {
            var w = 0.0;
            foreach (var (n, weight) in _p.Neighbours[a])
            {
                if (n == b) w += weight;
            }
            return w;
        }

        /// <summary>First-improvement descent over moves (where balance allows) and swaps within a layer.</summary>
        public void Descend()
        {
            var (experts, silos) = (_p.Experts, _p.Silos);
            for (var improved = true; improved;)
            {
                improved = false;
                for (var i = 0; i < _p.Layers.Count; i++)
                {
                    for (var e1 = 0; e1 < experts; e1++)
                    {
                        var n1 = i * experts + e1;
                        if (_p.MaxPerSilo > _p.MinPerSilo)
                        {
                            for (var c = 0; c < silos; c++)
                            {
                                var from = Assignment[n1];
                                if (c == from || _count[i * silos + from] <= _p.MinPerSilo || _count[i * silos + c] >= _p.MaxPerSilo) continue;
                                if (MoveGain(n1, c) < -Epsilon && Fits(c, Bytes(n1)))
                                {
                                    Move(n1, c);
                                    improved = true;
                                }
                            }
                        }
                        for (var e2 = e1 + 1; e2 < experts; e2++)
                        {
                            var n2 = i * experts + e2;
                            var (c1, c2) = (Assignment[n1], Assignment[n2]);
                            if (c1 == c2) continue;
                            // The two moves price independently, except for an edge joining n1 and n2 (a trace with
                            // edges inside a layer, CoherentDispatchTrace): it crosses before and after the swap, while
                            // each move alone would have counted it as closed.
                            var gain = MoveGain(n1, c2) + MoveGain(n2, c1) + 2 * Joined(n1, n2);
                            var shift = Bytes(n2) - Bytes(n1);
                            if (gain < -Epsilon && Fits(c1, shift) && Fits(c2, -shift))
                            {
                                Move(n1, c2);
                                Move(n2, c1);
                                improved = true;
                            }
                        }
                    }
                }
            }
        }

        /// <summary>Random feasible swaps within layers.</summary>
        public void Perturb(Random random, int swaps)
        {
            for (var s = 0; s < swaps; s++)
            {
                var i = random.Next(_p.Layers.Count);
                var n1 = i * _p.Experts + random.Next(_p.Experts);
                var n2 = i * _p.Experts + random.Next(_p.Experts);
                var (c1, c2) = (Assignment[n1], Assignment[n2]);
                var shift = Bytes(n2) - Bytes(n1);
                if (c1 != c2 && Fits(c1, shift) && Fits(c2, -shift))
                {
                    Move(n1, c2);
                    Move(n2, c1);
                }
            }
        }
    }
}
