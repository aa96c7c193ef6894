namespace MoeGrains.Placement;

/// <summary>
/// Where each physical expert slot comes from, per layer. <c>PhysicalToLogical[l][p]</c> is the logical expert that slot p
/// replicates (slots <c>g * slotsPerGpu ...</c> belong to GPU or silo g); <c>ReplicaRank[l][p]</c> numbers the replicas of one
/// logical expert from 0; <c>ReplicaCount[l][e]</c> is how many slots replicate expert e.
/// </summary>
public sealed record ReplicationPlan(int[][] PhysicalToLogical, int[][] ReplicaRank, int[][] ReplicaCount)
{
    /// <summary>The load each GPU receives when an expert's load is split evenly over its replicas: <c>[layer][gpu]</c>.</summary>
    public double[][] GpuLoads(double[][] load, int gpus)
    {
        ArgumentNullException.ThrowIfNull(load);
        var result = new double[PhysicalToLogical.Length][];
        for (var l = 0; l < result.Length; l++)
        {
            var slots = PhysicalToLogical[l];
            var perGpu = slots.Length / gpus;
            result[l] = new double[gpus];
            for (var p = 0; p < slots.Length; p++)
            {
                result[l][p / perGpu] += load[l][slots[p]] / ReplicaCount[l][slots[p]];
            }
        }
        return result;
    }
}

/// <summary>
/// Hot-expert replication with balanced packing, the DeepSeek EPLB policy. Hierarchical when the expert groups divide
/// evenly over the nodes: (1) expert groups are packed onto nodes so that node loads balance; (2) within each node the
/// expert with the highest load per replica gets the next replica until the node's slots are full; (3) the node's
/// replicas, each carrying its expert's load divided by its replica count, are packed onto the node's GPUs. Otherwise the
/// same steps run with one group and one node (global replication). Balanced packing places items heaviest first, each
/// on the lightest pack that still has room; ties go to the lowest index, items of equal weight keep their order.
/// </summary>
public static class ExpertReplication
{
    /// <param name="load">Per layer, the load (tokens routed) of each logical expert.</param>
    /// <param name="replicas">Physical slots per layer, a multiple of <paramref name="gpus"/>, at least the number of experts.</param>
    /// <param name="groups">Expert groups (consecutive experts; a group stays on one node).</param>
    /// <param name="nodes">Nodes (or server machines); groups are spread over them.</param>
    /// <param name="gpus">GPUs (or silos) in all, a multiple of <paramref name="nodes"/>.</param>
    public static ReplicationPlan Rebalance(double[][] load, int replicas, int groups, int nodes, int gpus)
    {
        ArgumentNullException.ThrowIfNull(load);
        if (load.Length == 0 || load[0].Length == 0 || load.Any(r => r.Length != load[0].Length))
        {
            throw new ArgumentException("Loads must be a non-empty rectangle: one row per layer, one column per expert.", nameof(load));
        }
        if (load.Any(r => r.Any(w => w < 0 || !double.IsFinite(w))))
        {
            throw new ArgumentException("Loads must be finite and non-negative.", nameof(load));
        }
        var experts = load[0].Length;
        if (groups < 1 || nodes < 1 || gpus < 1 || experts % groups != 0)
        {
            throw new ArgumentException($"{experts} experts do not divide into {groups} groups (groups, nodes and gpus must be positive).");
        }
        if (replicas < experts || replicas % gpus != 0 || gpus % nodes != 0)
        {
            throw new ArgumentException($"Need replicas ({replicas}) >= experts ({experts}), replicas a multiple of gpus ({gpus}), gpus a multiple of nodes ({nodes}).");
        }
        if (groups % nodes != 0)
        {
            (groups, nodes) = (1, 1);
        }
        var phy2log = new int[load.Length][];
        var rank = new int[load.Length][];
        var count = new int[load.Length][];
        for (var l = 0; l < load.Length; l++)
        {
            (phy2log[l], rank[l], count[l]) = Layer(load[l], replicas, groups, nodes, gpus);
        }
        return new ReplicationPlan(phy2log, rank, count);
    }

    private static (int[] PhysicalToLogical, int[] Rank, int[] Count) Layer(double[] load, int replicas, int groups, int nodes, int gpus)
    {
        var experts = load.Length;
        var groupSize = experts / groups;
        var groupsPerNode = groups / nodes;
        var expertsPerNode = experts / nodes;
        var slotsPerNode = replicas / nodes;
        var gpusPerNode = gpus / nodes;
        var slotsPerGpu = replicas / gpus;

        // (1) Groups onto nodes. A node lists its experts group by group, in the order the groups were packed.
        var groupLoad = new double[groups];
        for (var e = 0; e < experts; e++) groupLoad[e / groupSize] += load[e];
        var (groupNode, groupRank) = BalancedPacking(groupLoad, nodes);
        var nodeExperts = new int[experts]; // position node * expertsPerNode + j -> logical expert
        for (var e = 0; e < experts; e++)
        {
            var g = e / groupSize;
            nodeExperts[(groupNode[g] * groupsPerNode + groupRank[g]) * groupSize + e % groupSize] = e;
        }

        var phy2log = new int[replicas];
        var rank = new int[replicas];
        var count = new int[experts];
        for (var node = 0; node < nodes; node++)
        {
            // (2) Replicas within the node: one each, then the highest load per replica gets the next.
            var local = new double[expertsPerNode];
            for (var j = 0; j < expertsPerNode; j++) local[j] = load[nodeExperts[node * expertsPerNode + j]];
            var slotExpert = new int[slotsPerNode];
            var slotRank = new int[slotsPerNode];
            var localCount = new int[expertsPerNode];
            for (var j = 0; j < expertsPerNode; j++)
            {
                slotExpert[j] = j;
                localCount[j] = 1;
            }
            for (var s = expertsPerNode; s < slotsPerNode; s++)
            {
                var hottest = 0;
                for (var j = 1; j < expertsPerNode; j++)
                {
                    if (local[j] / localCount[j] > local[hottest] / localCount[hottest]) hottest = j;
                }
                slotExpert[s] = hottest;
                slotRank[s] = localCount[hottest]++;
            }

            // (3) The node's replicas onto its GPUs, each weighing its expert's load over its final replica count.
            var slotLoad = new double[slotsPerNode];
            for (var s = 0; s < slotsPerNode; s++) slotLoad[s] = local[slotExpert[s]] / localCount[slotExpert[s]];
            var (slotGpu, slotRankOnGpu) = BalancedPacking(slotLoad, gpusPerNode);
            for (var s = 0; s < slotsPerNode; s++)
            {
                var physical = node * slotsPerNode + slotGpu[s] * slotsPerGpu + slotRankOnGpu[s];
                phy2log[physical] = nodeExperts[node * expertsPerNode + slotExpert[s]];
                rank[physical] = slotRank[s];
            }
            for (var j = 0; j < expertsPerNode; j++) count[nodeExperts[node * expertsPerNode + j]] = localCount[j];
        }
        return (phy2log, rank, count);
    }

    /// <summary>
    /// Packs items into <paramref name="packs"/> packs of equal item count, heaviest item first onto the lightest pack with
    /// room. Returns each item's pack and its position in that pack.
    /// </summary>
    internal static (int[] Pack, int[] Rank) BalancedPacking(double[] weights, int packs)
    {
        var n = weights.Length;
        if (n % packs != 0)
        {
            throw new ArgumentException($"{n} items do not divide into {packs} packs.");
        }
        var perPack = n / packs;
        var pack = new int[n];
        var rank = new int[n];
        if (perPack == 1)
        {
            for (var i = 0; i < n; i++) pack[i] = i;
            return (pack, rank);
        }
        var packWeight = new double[packs];
        var packItems = new int[packs];
        var order = Enumerable.Range(0, n).OrderByDescending(i => weights[i]).ThenBy(i => i); // stable
        foreach (var item in order)
        {
            var best = -1;
            for (var p = 0; p < packs; p++)
            {
                if (packItems[p] < perPack && (best < 0 || packWeight[p] < packWeight[best])) best = p;
            }
            pack[item] = best;
            rank[item] = packItems[best]++;
            packWeight[best] += weights[item];
        }
        return (pack, rank);
    }
}
