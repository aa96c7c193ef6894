using MoeGrains.Diffusion;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Diffusion;

/// <summary>Held-out partition assignment, the eval diagnostics, step allocation and the aggregation over seeds.</summary>
public sealed class DiagnosticsTests
{
    [Fact]
    public void Held_out_images_go_to_the_partition_whose_centre_is_nearest()
    {
        var (train, held) = DigitData.Load(DiffusionTestData.Digits, DigitData.OptDigits);
        using (train)
        using (held)
        using (var subset = train.Select([.. Enumerable.Range(0, 400)]))
        {
            var partition = Partitioning.KMeansClusters(subset.Images.reshape(subset.Count, -1), 3, seed: 4);
            // At k-means' fixed point every training image is nearest its own centre.
            var again = Partitioning.Assign(subset, subset, partition, Partitioning.KMeans, 3);
            Assert.True(again.Zip(partition).Count(p => p.First == p.Second) >= 396, "the assignment disagrees with k-means on its own points");
            var heldAssigned = Partitioning.Assign(held, subset, partition, Partitioning.KMeans, 3);
            Assert.Equal(held.Count, heldAssigned.Length);
            Assert.Equal(3, heldAssigned.Distinct().Count());
            Assert.Equal(held.Labels.Select(l => l % 3), Partitioning.Assign(held, subset, partition, Partitioning.ByClass, 3));
        }
    }

    [Fact]
    public void Steps_by_size_share_the_same_total_in_proportion_to_the_partitions()
    {
        var m = DiffusionTestData.Tiny(3) with { Steps = 100, StepAllocation = DiffusionManifest.StepsBySize };
        int[] sizes = [100, 300, 200];
        var steps = Enumerable.Range(0, 3).Select(k => m.ExpertSteps(k, sizes)).ToArray();
        Assert.Equal([50, 150, 100], steps);
        Assert.Equal(100, (m with { StepAllocation = DiffusionManifest.EqualSteps }).ExpertSteps(0, sizes));
        Assert.Throws<ArgumentException>(() => (m with { StepAllocation = "random" }).Validate());
    }

    [Fact]
    public void Diagnostics_route_each_held_out_image_to_its_partitions_expert()
    {
        set_num_threads(1);
        using var dir = TestPaths.Temp();
        var folder = DiffusionTestData.Untrained(dir.File("m"), 2);
        var (train, held) = DigitData.Load(DiffusionTestData.Digits, DigitData.OptDigits);
        using (train)
        using (held)
        using (var few = held.Select([.. Enumerable.Range(0, 60)]))
        using (var noise = randn(few.Images.shape, generator: new Generator(3)))
        using (var times = rand(60, generator: new Generator(4)))
        {
            var (oracle, partitions, router) = DiffusionEvaluation.Diagnose(folder, DiffusionTestData.Plugins, DiffusionTestData.Services, train, few,
                folder.ReadPartition(), noise, times);
            Assert.Equal(2, partitions.Count);
            Assert.Equal(60, partitions.Sum(p => p.Images));
            // The oracle loss is the image-weighted mean of each expert's loss on its own partition.
            Assert.Equal(partitions.Sum(p => p.Images * p.ExpertLoss) / 60, oracle, 6);
            Assert.Equal(DiffusionEvaluation.RouterTimeBins, router.Count);
            Assert.Equal(60, router.Sum(r => r.Images));
            Assert.All(router.Where(r => r.Images > 0), r => Assert.InRange(r.Accuracy, 0, 1));
            // Untrained experts differ from the untrained monolith, so their losses differ.
            Assert.NotEqual(partitions[0].ExpertLoss, partitions[0].MonolithLoss);
        }
    }

    private static DiffusionEvalReport Report(double monoLoss, double topLoss, double monoFd, double topFd) =>
        new("optdigits", 8, 2, "kmeans", [1, 1], 10, 4, 0.9, 1.0,
        [
            new DiffusionSystemResult("monolith", monoLoss, monoFd, 1.0, 100, 10),
            new DiffusionSystemResult("ensemble-top1", topLoss, topFd, 0.9, 100, 12),
        ])
        {
            OracleLoss = topLoss - 0.01,
            RouterAccuracy = [new DiffusionRouterAccuracy(0, 1, 10, 0.5)],
        };

    [Fact]
    public void Seeds_are_aggregated_with_their_spread_and_paired_differences()
    {
        var summary = DiffusionSeeds.Aggregate([Report(0.5, 0.6, 10, 12), Report(0.6, 0.6, 20, 18), Report(0.7, 0.9, 30, 30)]);
        var mono = summary.Systems[0];
        Assert.Equal("monolith", mono.Name);
        Assert.Equal(0.6, mono.HeldoutLoss.Mean, 9);
        Assert.Equal(0.1, mono.HeldoutLoss.Std, 9);
        Assert.Equal(0, mono.LossMinusMonolith.Mean, 9);
        var top = summary.Systems[1];
        Assert.Equal(0.1, top.LossMinusMonolith.Mean, 9);          // differences 0.1, 0, 0.2
        Assert.Equal(0.1, top.LossMinusMonolith.Std, 9);
        Assert.Equal(0, top.FrechetMinusMonolith.Mean, 9);         // differences 2, -2, 0
        Assert.Equal(2, top.FrechetMinusMonolith.Std, 9);
        Assert.Equal(3, top.Runs);
        Assert.Equal(0.5, summary.RouterAccuracyByTime[0].Mean, 9);
        Assert.Throws<ArgumentException>(() => DiffusionSeeds.Aggregate([]));
    }
}
