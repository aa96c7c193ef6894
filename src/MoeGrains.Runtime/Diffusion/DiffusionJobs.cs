using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>
/// The training jobs of a decentralized diffusion model, each reading only the shared data, the manifest and its
/// partition list, and writing only its own checkpoint and progress file: an expert job runs in its own process with no
/// channel to the others.
/// </summary>
public static class DiffusionJobs
{
    /// <summary>Partitions the training images and writes <c>partition.json</c>; returns the size of each partition.</summary>
    public static int[] Partition(DiffusionModelFolder folder, string digitsFolder)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var m = folder.Manifest;
        var (train, held) = DigitData.Load(digitsFolder, m.Dataset, m.MnistPool);
        using (train)
        using (held)
        {
            if (train.Size != m.ImageSize) throw new ArgumentException($"The manifest says {m.ImageSize}x{m.ImageSize} images, the data are {train.Size}x{train.Size}.");
            var partition = Partitioning.Partition(train, m.Partitioning, m.Experts, (int)m.Seed);
            folder.WritePartition(partition);
            return [.. Enumerable.Range(0, m.Experts).Select(k => partition.Count(p => p == k))];
        }
    }

    /// <summary>Trains expert <paramref name="k"/> on its partition alone and writes its checkpoint.</summary>
    public static DiffusionTrainingResult TrainExpert(DiffusionModelFolder folder, string digitsFolder, int k, PluginCatalog plugins, IServiceProvider services,
        Action<DiffusionProgress>? report = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var m = folder.Manifest;
        if (k < 0 || k >= m.Experts) throw new Contracts.UnknownExpertException($"The model has experts 0..{m.Experts - 1}; there is no expert {k}.");
        var partition = folder.ReadPartition();
        var (train, held) = DigitData.Load(digitsFolder, m.Dataset, m.MnistPool);
        held.Dispose();
        using (train)
        {
            if (partition.Length != train.Count) throw new Contracts.CheckpointException($"partition.json lists {partition.Length} images, the training set has {train.Count}.");
            var members = Partitioning.Members(partition, m.Experts);
            using var mine = train.Select(members[k]);
            return Train(folder, plugins, services, $"expert-{k}", k, mine.Images, m.ExpertSteps(k, [.. members.Select(x => x.Length)]), folder.ExpertFile(k), report);
        }
    }

    /// <summary>The monolith: the same network trained on all the training images for <paramref name="steps"/> steps.</summary>
    public static DiffusionTrainingResult TrainMonolith(DiffusionModelFolder folder, string digitsFolder, int steps, PluginCatalog plugins, IServiceProvider services,
        Action<DiffusionProgress>? report = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var (train, held) = DigitData.Load(digitsFolder, folder.Manifest.Dataset, folder.Manifest.MnistPool);
        held.Dispose();
        using (train)
        {
            return Train(folder, plugins, services, DiffusionModelFolder.Monolith, -1, train.Images, steps, folder.MonolithFile, report);
        }
    }

    /// <summary>Monolith steps whose training FLOPs match (at least) <paramref name="flops"/>.</summary>
    public static int MatchedSteps(long flops, int batch, long flopsPerImage) => (int)Math.Ceiling(flops / (3.0 * batch * flopsPerImage));

    /// <summary>Trains the router (cross-entropy on the partition of each image, from its noisy version).</summary>
    public static DiffusionTrainingResult TrainRouter(DiffusionModelFolder folder, string digitsFolder, PluginCatalog plugins, IServiceProvider services,
        Action<DiffusionProgress>? report = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        ArgumentNullException.ThrowIfNull(plugins);
        var m = folder.Manifest;
        var partition = folder.ReadPartition();
        var (train, held) = DigitData.Load(digitsFolder, m.Dataset, m.MnistPool);
        held.Dispose();
        using (train)
        {
            var seed = m.SeedOf(-2);
            using var router = plugins.Create<IDiffusionRouter>(m.RouterPlugin, PluginKind.DiffusionRouter, folder.FreshContext(DiffusionModelFolder.Router, -1, seed), services);
            var options = new DiffusionTrainingOptions { Steps = m.RouterSteps, Batch = m.Batch, LearningRate = m.LearningRate, Seed = seed };
            var file = folder.ProgressFile(DiffusionModelFolder.Router);
            var result = DiffusionTrainer.TrainRouter(router, train.Images, partition, options, (step, loss) =>
            {
                var p = new DiffusionProgress(DiffusionModelFolder.Router, step, options.Steps, loss, false, 3L * step * options.Batch * router.FlopsPerImage, train.Count);
                p.Write(file);
                report?.Invoke(p);
            });
            folder.Save(folder.RouterFile, (IStateDict)router, m.RouterPlugin, DiffusionModelFolder.Router, result.Flops);
            var done = new DiffusionProgress(DiffusionModelFolder.Router, result.Steps, result.Steps, result.FinalLoss, true, result.Flops, train.Count);
            done.Write(file);
            report?.Invoke(done);
            return result;
        }
    }

    private static DiffusionTrainingResult Train(DiffusionModelFolder folder, PluginCatalog plugins, IServiceProvider services, string role, int k, Tensor images, int steps,
        string checkpoint, Action<DiffusionProgress>? report)
    {
        var m = folder.Manifest;
        var seed = m.SeedOf(k);
        using var expert = plugins.Create<IDiffusionExpert>(m.ExpertPlugin, PluginKind.DiffusionExpert, folder.FreshContext(role, k, seed), services);
        var options = new DiffusionTrainingOptions { Steps = steps, Batch = m.Batch, LearningRate = m.LearningRate, Seed = seed };
        var file = folder.ProgressFile(role);
        var count = (int)images.shape[0];
        var result = DiffusionTrainer.TrainExpert(expert, images, options, (step, loss) =>
        {
            var p = new DiffusionProgress(role, step, steps, loss, false, 3L * step * options.Batch * expert.FlopsPerImage, count);
            p.Write(file);
            report?.Invoke(p);
        });
        folder.Save(checkpoint, (IStateDict)expert, m.ExpertPlugin, role, result.Flops);
        var done = new DiffusionProgress(role, result.Steps, steps, result.FinalLoss, true, result.Flops, count);
        done.Write(file);
        report?.Invoke(done);
        return result;
    }
}
