using CsCheck;
using MoeGrains.Placement;

namespace MoeGrains.Tests.Placement;

public sealed class ExpertReplicationTests
{
    [Fact]
    public void The_published_eplb_example_is_reproduced_exactly()
    {
        double[][] weight =
        [
            [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
            [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
        ];
        var plan = ExpertReplication.Rebalance(weight, replicas: 16, groups: 4, nodes: 2, gpus: 8);
        Assert.Equal([5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1], plan.PhysicalToLogical[0]);
        Assert.Equal([7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1], plan.PhysicalToLogical[1]);
        Check(weight, plan, 16);
    }

    [Fact]
    public void Replication_invariants_hold_on_random_loads()
    {
        var gen = Gen.Select(Gen.Int[1, 3], Gen.Int[1, 4], Gen.Int[1, 4], Gen.Int[1, 2], Gen.Int[1, 2], Gen.Int[0, 2], Gen.Int[0, 1000].Array[3 * 16]);
        gen.Sample((layers, groups, groupSize, nodes, gpusPerNode, extraPerGpu, pool) =>
        {
            var experts = groups * groupSize;
            var gpus = nodes * gpusPerNode;
            var replicas = (experts + gpus - 1) / gpus * gpus + gpus * extraPerGpu;
            var weight = Enumerable.Range(0, layers).Select(l => pool.Skip(l * 16).Take(experts).Select(x => (double)x).ToArray()).ToArray();
            var plan = ExpertReplication.Rebalance(weight, replicas, groups, nodes, gpus);
            Check(weight, plan, replicas);
            var loads = plan.GpuLoads(weight, gpus);
            for (var l = 0; l < layers; l++)
            {
                // Replicas split an expert's load without losing any, and never make the heaviest replica heavier.
                Assert.Equal(weight[l].Sum(), loads[l].Sum(), 6);
                var heaviestReplica = Enumerable.Range(0, experts).Max(e => weight[l][e] / plan.ReplicaCount[l][e]);
                Assert.True(heaviestReplica <= weight[l].Max());
                Assert.True(loads[l].Max() >= weight[l].Sum() / gpus - 1e-9);
            }
        }, iter: 200);
    }

    [Fact]
    public void Bad_shapes_are_refused()
    {
        double[][] weight = [[1, 2, 3, 4]];
        Assert.Throws<ArgumentException>(() => ExpertReplication.Rebalance(weight, 3, 1, 1, 1));
        Assert.Throws<ArgumentException>(() => ExpertReplication.Rebalance(weight, 6, 1, 1, 4));
        Assert.Throws<ArgumentException>(() => ExpertReplication.Rebalance(weight, 4, 3, 1, 1));
        Assert.Throws<ArgumentException>(() => ExpertReplication.Rebalance([[1, -2]], 2, 1, 1, 1));
    }

    private static void Check(double[][] weight, ReplicationPlan plan, int replicas)
    {
        for (var l = 0; l < weight.Length; l++)
        {
            var slots = plan.PhysicalToLogical[l];
            Assert.Equal(replicas, slots.Length);
            Assert.Equal(replicas, plan.ReplicaCount[l].Sum());
            for (var e = 0; e < weight[l].Length; e++)
            {
                // Every expert has at least one replica, and its replicas are ranked 0..count-1.
                var ranks = Enumerable.Range(0, replicas).Where(p => slots[p] == e).Select(p => plan.ReplicaRank[l][p]).Order().ToArray();
                Assert.Equal(plan.ReplicaCount[l][e], ranks.Length);
                Assert.Equal(Enumerable.Range(0, ranks.Length), ranks);
            }
        }
    }
}
