namespace MoeGrains.Placement;

/// <summary>
/// Hot-expert replication of a running model: for each expert of the covered layers, the silo (0..Silos-1, the director's
/// order) of each of its replicas. Replica 0 is the expert's own grain (<see cref="Primary"/> is the plan that places it);
/// replicas 1.. are more activations of the same weights (<see cref="Contracts.ExpertKey.Replica"/>), and a layer splits
/// the expert's tokens over all of them.
/// </summary>
public sealed class ReplicaPlacement
{
    private readonly Dictionary<int, int> _layerIndex;
    private readonly IReadOnlyList<int>[] _counts;

    /// <param name="replicaSilos"><c>replicaSilos[i * experts + e][r]</c>: the silo of replica r of expert e of <c>layers[i]</c>.</param>
    public ReplicaPlacement(IReadOnlyList<int> layers, int experts, int silos, int[][] replicaSilos)
    {
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentNullException.ThrowIfNull(replicaSilos);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(experts);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(silos);
        if (layers.Count == 0 || layers.Distinct().Count() != layers.Count || layers.Any(l => l < 0))
        {
            throw new ArgumentException("The layers must be distinct, non-negative and at least one.", nameof(layers));
        }
        if (replicaSilos.Length != layers.Count * experts)
        {
            throw new ArgumentException($"{replicaSilos.Length} experts' replicas for {layers.Count} layers of {experts} experts.", nameof(replicaSilos));
        }
        foreach (var r in replicaSilos)
        {
            if (r is null || r.Length is < 1 or >= Contracts.ExpertKey.MAX_REPLICAS || r.Any(s => (uint)s >= (uint)silos))
            {
                throw new ArgumentException($"Every expert needs 1..{Contracts.ExpertKey.MAX_REPLICAS - 1} replicas, each on a silo 0..{silos - 1}.", nameof(replicaSilos));
            }
        }
        Layers = layers;
        Experts = experts;
        Silos = silos;
        ReplicaSilos = replicaSilos;
        _layerIndex = layers.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
        _counts = [.. Enumerable.Range(0, layers.Count).Select(i => (IReadOnlyList<int>)[.. Enumerable.Range(0, experts).Select(e => replicaSilos[i * experts + e].Length)])];
    }

    public IReadOnlyList<int> Layers { get; }

    public int Experts { get; }

    public int Silos { get; }

    public int[][] ReplicaSilos { get; }

    /// <summary>The replica count of each expert of a layer, or null when the layer is not covered.</summary>
    public IReadOnlyList<int>? Counts(int layer) => _layerIndex.TryGetValue(layer, out var i) ? _counts[i] : null;

    /// <summary>The silo of a replica, or null when the plan does not have it.</summary>
    public int? SiloOf(int layer, int expert, int replica) =>
        _layerIndex.TryGetValue(layer, out var i) && (uint)expert < (uint)Experts && (uint)replica < (uint)ReplicaSilos[i * Experts + expert].Length
            ? ReplicaSilos[i * Experts + expert][replica]
            : null;

    /// <summary>Activations in all (replicas 0.. of every expert).</summary>
    public int Activations => ReplicaSilos.Sum(r => r.Length);

    /// <summary>The placement plan of the replicas 0 (the experts' own grains).</summary>
    public PlacementPlan Primary() => new(Layers, Experts, Silos, [.. ReplicaSilos.Select(r => r[0])]);

    /// <summary>
    /// Expected tokens per silo and layer when each expert's <paramref name="load"/> (<c>[layer index][expert]</c>) is split
    /// evenly over its replicas: <c>[layer index][silo]</c>.
    /// </summary>
    public double[][] SiloLoads(double[][] load)
    {
        ArgumentNullException.ThrowIfNull(load);
        var result = new double[Layers.Count][];
        for (var i = 0; i < Layers.Count; i++)
        {
            result[i] = new double[Silos];
            for (var e = 0; e < Experts; e++)
            {
                var replicas = ReplicaSilos[i * Experts + e];
                foreach (var s in replicas) result[i][s] += load[i][e] / replicas.Length;
            }
        }
        return result;
    }

    /// <summary>No replication: each expert once, on the silo <paramref name="plan"/> gives it.</summary>
    public static ReplicaPlacement Single(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        return new ReplicaPlacement(plan.Layers, plan.Experts, plan.Silos, [.. plan.Assignment.Select(s => new[] { s })]);
    }

    /// <summary>
    /// The DeepSeek EPLB policy (<see cref="ExpertReplication"/>, global: one group, one node, a silo per GPU) on measured
    /// loads: <paramref name="slots"/> expert activations per layer (at least the experts, a multiple of the silos), the
    /// hottest experts (by load per replica) getting the extra ones, the replicas packed so that silo loads balance; then
    /// a replica that landed on a silo its expert already has swaps silos with the closest-weight slot that can take its
    /// place. Replica r of an expert is the slot EPLB ranked r.
    /// </summary>
    /// <param name="load"><c>[layer index][expert]</c>: tokens routed to each expert of <paramref name="layers"/>.</param>
    public static ReplicaPlacement Balance(double[][] load, IReadOnlyList<int> layers, int silos, int slots)
    {
        ArgumentNullException.ThrowIfNull(load);
        ArgumentNullException.ThrowIfNull(layers);
        if (load.Length != layers.Count)
        {
            throw new ArgumentException($"{load.Length} rows of loads for {layers.Count} layers.", nameof(load));
        }
        var plan = ExpertReplication.Rebalance(load, slots, groups: 1, nodes: 1, gpus: silos);
        var experts = load[0].Length;
        var perSilo = slots / silos;
        var replicaSilos = new int[layers.Count * experts][];
        for (var i = 0; i < layers.Count; i++)
        {
            var slotSilo = Enumerable.Range(0, slots).Select(p => p / perSilo).ToArray();
            Spread(plan.PhysicalToLogical[i], slotSilo, [.. Enumerable.Range(0, slots).Select(p =>
                load[i][plan.PhysicalToLogical[i][p]] / plan.ReplicaCount[i][plan.PhysicalToLogical[i][p]])]);
            for (var e = 0; e < experts; e++) replicaSilos[i * experts + e] = new int[plan.ReplicaCount[i][e]];
            for (var p = 0; p < slots; p++)
            {
                replicaSilos[i * experts + plan.PhysicalToLogical[i][p]][plan.ReplicaRank[i][p]] = slotSilo[p];
            }
        }
        return new ReplicaPlacement(layers, experts, silos, replicaSilos);
    }

    // EPLB's packing can put two replicas of one expert on one silo, where the second balances nothing. Each such slot
    // swaps silos with the slot of closest weight on another silo whose expert is not on the first silo (and the first
    // slot's expert not on the other): slot counts per silo stay, loads change by the weights' difference.
    private static void Spread(int[] slotExpert, int[] slotSilo, double[] weight)
    {
        for (var round = 0; round < slotExpert.Length; round++)
        {
            bool On(int expert, int silo, int except) =>
                Enumerable.Range(0, slotExpert.Length).Any(q => q != except && slotExpert[q] == expert && slotSilo[q] == silo);
            var p = Enumerable.Range(0, slotExpert.Length).FirstOrDefault(p => On(slotExpert[p], slotSilo[p], p), -1);
            if (p < 0) return;
            var best = -1;
            for (var q = 0; q < slotExpert.Length; q++)
            {
                if (slotSilo[q] == slotSilo[p] || slotExpert[q] == slotExpert[p] || On(slotExpert[q], slotSilo[p], q) || On(slotExpert[p], slotSilo[q], p)) continue;
                if (best < 0 || Math.Abs(weight[q] - weight[p]) < Math.Abs(weight[best] - weight[p])) best = q;
            }
            if (best < 0) return;
            (slotSilo[p], slotSilo[best]) = (slotSilo[best], slotSilo[p]);
        }
    }

    /// <summary>The slots per layer <see cref="Balance"/> uses by default: the experts rounded up to a multiple of the silos, plus one per silo.</summary>
    public static int DefaultSlots(int experts, int silos) => (experts + silos - 1) / silos * silos + silos;

    /// <summary>
    /// Tokens routed to each expert of <paramref name="layers"/> in recorded routes (each of a token's chosen experts
    /// counts one): the live load a replication plan is made from. <c>[layer index][expert]</c>.
    /// </summary>
    public static double[][] Loads(IEnumerable<TokenRoute> routes, IReadOnlyList<int> layers, int experts)
    {
        ArgumentNullException.ThrowIfNull(routes);
        ArgumentNullException.ThrowIfNull(layers);
        var index = layers.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
        var load = layers.Select(_ => new double[experts]).ToArray();
        foreach (var route in routes)
        {
            foreach (var step in route.Layers)
            {
                if (!index.TryGetValue(step.Layer, out var i)) continue;
                foreach (var e in step.Experts)
                {
                    if ((uint)e < (uint)experts) load[i][e]++;
                }
            }
        }
        return load;
    }

    /// <summary>Max over mean of a load vector (1 = perfectly balanced; 0 when there is no load).</summary>
    public static double Imbalance(IReadOnlyCollection<double> load)
    {
        ArgumentNullException.ThrowIfNull(load);
        var mean = load.Count == 0 ? 0 : load.Average();
        return mean > 0 ? load.Max() / mean : 0;
    }
}

/// <summary>A replica placement as a message (flattened).</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ReplicaPlacementMessage")]
public sealed record ReplicaPlacementMessage(
    [property: Id(0)] int[] Layers,
    [property: Id(1)] int Experts,
    [property: Id(2)] int Silos,
    [property: Id(3)] int[] Counts,
    [property: Id(4)] int[] ReplicaSilos)
{
    public static ReplicaPlacementMessage From(ReplicaPlacement placement)
    {
        ArgumentNullException.ThrowIfNull(placement);
        return new([.. placement.Layers], placement.Experts, placement.Silos, [.. placement.ReplicaSilos.Select(r => r.Length)],
            [.. placement.ReplicaSilos.SelectMany(r => r)]);
    }

    public ReplicaPlacement ToPlacement()
    {
        if (Counts.Length != Layers.Length * Experts || Counts.Any(c => c < 1) || Counts.Sum() != ReplicaSilos.Length)
        {
            throw new ArgumentException("The replica counts do not match the layers, experts and replica silos.");
        }
        var result = new int[Counts.Length][];
        var at = 0;
        for (var n = 0; n < Counts.Length; n++)
        {
            result[n] = ReplicaSilos[at..(at + Counts[n])];
            at += Counts[n];
        }
        return new ReplicaPlacement(Layers, Experts, Silos, result);
    }
}
