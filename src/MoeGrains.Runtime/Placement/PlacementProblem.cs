namespace MoeGrains.Placement;

/// <summary>
/// Where to put the experts of the traced layers on <see cref="Silos"/> silos. A node is one (layer, expert), numbered
/// <c>layerIndex * Experts + expert</c>; an edge joins two nodes of consecutive traced layers and weighs the transitions
/// counted between them. A plan is feasible when every layer has <c>floor(E/G)</c> or <c>ceil(E/G)</c> experts on every
/// silo and, where budgets are given, no silo holds more expert bytes than its budget.
/// </summary>
public sealed class PlacementProblem
{
    public PlacementProblem(RoutingTrace trace, int silos, long[]? expertBytes = null, long[]? siloBudgetBytes = null)
    {
        ArgumentNullException.ThrowIfNull(trace);
        ArgumentOutOfRangeException.ThrowIfLessThan(silos, 1);
        if (trace.Transitions.Count == 0)
        {
            throw new ArgumentException("The trace has no layer-to-layer transitions to place by.", nameof(trace));
        }
        Trace = trace;
        Silos = silos;
        Layers = [.. trace.Layers];
        Experts = trace.Experts;
        Nodes = Layers.Count * Experts;
        if (expertBytes is not null && expertBytes.Length != Nodes)
        {
            throw new ArgumentException($"expertBytes has {expertBytes.Length} entries; the problem has {Nodes} (layer, expert) nodes.", nameof(expertBytes));
        }
        if (siloBudgetBytes is not null && siloBudgetBytes.Length != silos)
        {
            throw new ArgumentException($"siloBudgetBytes has {siloBudgetBytes.Length} entries for {silos} silos.", nameof(siloBudgetBytes));
        }
        if (expertBytes?.Any(b => b < 0) == true || siloBudgetBytes?.Any(b => b < 0) == true)
        {
            throw new ArgumentException("Sizes and budgets must not be negative.");
        }
        ExpertBytes = expertBytes;
        SiloBudgetBytes = siloBudgetBytes;
        MinPerSilo = Experts / silos;
        MaxPerSilo = (Experts + silos - 1) / silos;

        var index = Layers.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
        var edges = new List<PlacementEdge>();
        foreach (var t in trace.Transitions)
        {
            var (la, lb) = (index[t.LayerFrom], index[t.LayerTo]);
            for (var a = 0; a < Experts; a++)
            {
                for (var b = 0; b < Experts; b++)
                {
                    var w = t.Counts[a * Experts + b];
                    if (w > 0)
                    {
                        edges.Add(new PlacementEdge(la * Experts + a, lb * Experts + b, w));
                    }
                }
            }
        }
        Edges = edges;
        TotalWeight = edges.Sum(e => e.Weight);
        var neighbours = new List<(int, double)>[Nodes];
        for (var n = 0; n < Nodes; n++) neighbours[n] = [];
        foreach (var e in edges)
        {
            neighbours[e.A].Add((e.B, e.Weight));
            neighbours[e.B].Add((e.A, e.Weight));
        }
        Neighbours = [.. neighbours.Select(n => n.ToArray())];
    }

    public RoutingTrace Trace { get; }

    public int Silos { get; }

    /// <summary>The traced layer numbers, ascending; node <c>i * Experts + e</c> is expert e of layer <c>Layers[i]</c>.</summary>
    public IReadOnlyList<int> Layers { get; }

    public int Experts { get; }

    public int Nodes { get; }

    public int MinPerSilo { get; }

    public int MaxPerSilo { get; }

    /// <summary>Bytes of each node's expert, or <c>null</c> when memory is not constrained.</summary>
    public long[]? ExpertBytes { get; }

    /// <summary>Each silo's memory budget for experts, or <c>null</c> when memory is not constrained.</summary>
    public long[]? SiloBudgetBytes { get; }

    public IReadOnlyList<PlacementEdge> Edges { get; }

    public double TotalWeight { get; }

    internal (int Node, double Weight)[][] Neighbours { get; }

    internal bool HasBudgets => ExpertBytes is not null && SiloBudgetBytes is not null;

    /// <summary>Silos are interchangeable when no budget tells them apart: solvers may then fix labels.</summary>
    internal bool SilosInterchangeable => SiloBudgetBytes is null || ExpertBytes is null || SiloBudgetBytes.Distinct().Count() == 1;

    /// <summary>The fraction of counted transitions whose two experts are on different silos.</summary>
    public double CrossFraction(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (TotalWeight == 0) return 0;
        var cross = 0.0;
        foreach (var e in Edges)
        {
            if (plan.Assignment[e.A] != plan.Assignment[e.B]) cross += e.Weight;
        }
        return cross / TotalWeight;
    }

    /// <summary>
    /// The expected <see cref="CrossFraction"/> of a random balanced plan: each layer's experts shuffled independently
    /// over the round-robin slots. Two experts of different layers share a silo with probability
    /// <c>sum_c (n_c / E)^2</c>, where <c>n_c</c> is how many of a layer's experts silo c holds. Exact, no sampling.
    /// </summary>
    public double ExpectedRandomCrossFraction()
    {
        var same = 0.0;
        for (var c = 0; c < Silos; c++)
        {
            var share = (double)SlotCount(c) / Experts;
            same += share * share;
        }
        return 1 - same;
    }

    /// <summary>How many of each layer's experts silo <paramref name="silo"/> holds in the round-robin plan.</summary>
    internal int SlotCount(int silo) => MinPerSilo + (silo < Experts % Silos ? 1 : 0);

    /// <summary>
    /// The cluster's default: expert e of layer l on silo <c>(e + l) mod G</c>, as <see cref="ExpertPlacementDirector"/> does
    /// without a plan.
    /// </summary>
    public PlacementPlan RoundRobin()
    {
        var assignment = new int[Nodes];
        for (var i = 0; i < Layers.Count; i++)
        {
            for (var e = 0; e < Experts; e++)
            {
                assignment[i * Experts + e] = (e + Layers[i]) % Silos;
            }
        }
        return new PlacementPlan(Layers, Experts, Silos, assignment);
    }

    /// <summary>A random balanced plan: every layer's round-robin slots shuffled.</summary>
    public PlacementPlan Random(Random random)
    {
        ArgumentNullException.ThrowIfNull(random);
        var assignment = new int[Nodes];
        var slots = Enumerable.Range(0, Experts).Select(e => e % Silos).ToArray();
        for (var i = 0; i < Layers.Count; i++)
        {
            random.Shuffle(slots);
            slots.CopyTo(assignment, i * Experts);
        }
        return new PlacementPlan(Layers, Experts, Silos, assignment);
    }

    /// <summary>Null when <paramref name="plan"/> meets every constraint, else what it breaks.</summary>
    public string? Violation(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.Assignment.Length != Nodes || plan.Silos != Silos)
        {
            return $"the plan has {plan.Assignment.Length} experts on {plan.Silos} silos; the problem {Nodes} on {Silos}.";
        }
        if (plan.Assignment.Any(s => (uint)s >= (uint)Silos))
        {
            return "an expert is assigned to a silo that does not exist.";
        }
        for (var i = 0; i < Layers.Count; i++)
        {
            for (var c = 0; c < Silos; c++)
            {
                var count = 0;
                for (var e = 0; e < Experts; e++)
                {
                    if (plan.Assignment[i * Experts + e] == c) count++;
                }
                if (count < MinPerSilo || count > MaxPerSilo)
                {
                    return $"layer {Layers[i]} has {count} experts on silo {c}; balance allows {MinPerSilo}..{MaxPerSilo}.";
                }
            }
        }
        if (HasBudgets)
        {
            var used = SiloBytes(plan);
            for (var c = 0; c < Silos; c++)
            {
                if (used[c] > SiloBudgetBytes![c])
                {
                    return $"silo {c} holds {used[c]} bytes of experts; its budget is {SiloBudgetBytes[c]}.";
                }
            }
        }
        return null;
    }

    /// <summary>Expert bytes on each silo (zeros when sizes are not given).</summary>
    public long[] SiloBytes(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        var used = new long[Silos];
        if (ExpertBytes is not null)
        {
            for (var n = 0; n < Nodes; n++) used[plan.Assignment[n]] += ExpertBytes[n];
        }
        return used;
    }
}

/// <summary>Transitions counted between two nodes (A in the earlier layer).</summary>
public readonly record struct PlacementEdge(int A, int B, double Weight);
