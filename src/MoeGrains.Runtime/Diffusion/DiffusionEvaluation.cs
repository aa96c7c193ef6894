using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>Settings of <see cref="DiffusionEvaluation"/>.</summary>
public sealed record DiffusionEvalOptions
{
    /// <summary>Images generated per system for the Fréchet distance and the class coverage.</summary>
    public int Samples { get; init; } = 500;

    public int Steps { get; init; } = 20;

    public long Seed { get; init; } = 11;

    public int ClassifierSteps { get; init; } = 2000;
}

/// <summary>One system's figures: <c>{name, heldout_loss, frechet, class_coverage, train_flops, sample_flops_per_image}</c>.</summary>
public sealed record DiffusionSystemResult(string Name, double HeldoutLoss, double Frechet, double ClassCoverage, long TrainFlops, double SampleFlopsPerImage)
{
    /// <summary>Experts evaluated per image per step (router excluded).</summary>
    public double ExpertsPerStep { get; init; }
}

public sealed record DiffusionEvalReport(
    string Dataset, int ImageSize, int Experts, string Partitioning, int[] PartitionSizes, int Samples, int Steps,
    double ClassifierAccuracy, double ReferenceFrechet, IReadOnlyList<DiffusionSystemResult> Systems)
{
    /// <summary>The model folder evaluated.</summary>
    public string Model { get; init; } = "";

    /// <summary>
    /// Held-out flow-matching loss when each held-out image is sent to the expert of its own partition (a router that
    /// knows the clean image's partition): the experts' quality apart from the router's.
    /// </summary>
    public double OracleLoss { get; init; }

    /// <summary>Per partition: held-out images assigned to it, its expert's loss on them and the monolith's on the same images.</summary>
    public IReadOnlyList<DiffusionPartitionLoss> PartitionLosses { get; init; } = [];

    /// <summary>The router's top-1 accuracy at naming the held-out image's partition, by noise level t.</summary>
    public IReadOnlyList<DiffusionRouterAccuracy> RouterAccuracy { get; init; } = [];
}

/// <summary>One partition's held-out images (assigned as <see cref="Partitioning.Assign"/> does) and the two losses on them.</summary>
public sealed record DiffusionPartitionLoss(int Partition, int Images, double ExpertLoss, double MonolithLoss);

/// <summary>The router's accuracy on held-out images whose time lies in [<paramref name="TimeFrom"/>, <paramref name="TimeTo"/>).</summary>
public sealed record DiffusionRouterAccuracy(double TimeFrom, double TimeTo, int Images, double Accuracy);

/// <summary>
/// Compares the monolith with the full, top-2 and top-1 ensembles of a trained model folder: held-out flow-matching
/// loss (same images, noise and times for all), Fréchet distance of generated to held-out images in the features of a
/// digit classifier trained here on the training split, that classifier's class coverage of the samples, and FLOPs.
/// </summary>
public static class DiffusionEvaluation
{
    public static async Task<DiffusionEvalReport> RunAsync(DiffusionModelFolder folder, string digitsFolder, PluginCatalog plugins, IServiceProvider services,
        DiffusionEvalOptions options, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        ArgumentNullException.ThrowIfNull(options);
        var m = folder.Manifest;
        var (train, held) = DigitData.Load(digitsFolder, m.Dataset, m.MnistPool);
        using var trainScope = train;
        using var heldScope = held;
        var partition = folder.ReadPartition();
        var sizes = Enumerable.Range(0, m.Experts).Select(k => partition.Count(p => p == k)).ToArray();

        log?.Invoke($"training the evaluation classifier on {train.Count} images");
        using var classifier = new DigitClassifier(m.ImageSize * m.ImageSize, options.Seed);
        classifier.Train(train, options.ClassifierSteps);
        var accuracy = classifier.Accuracy(held);
        using var _ = no_grad();
        using var heldFeatures = classifier.Features(held.Images);
        double reference;
        using (var subset = train.Images.narrow(0, 0, Math.Min(options.Samples, train.Count)))
        using (var f = classifier.Features(subset))
        {
            reference = Frechet.Distance(f, heldFeatures);
        }
        log?.Invoke($"classifier held-out accuracy {accuracy:P1}; Fréchet distance of {Math.Min(options.Samples, train.Count)} training images to the held-out set {reference:F2}");

        // The same noise and times for every system's held-out loss.
        using var gen = new Generator((ulong)options.Seed + 1);
        using var noise = randn(held.Images.shape, generator: gen);
        using var times = rand(held.Count, generator: gen);

        var expertFlops = Enumerable.Range(0, m.Experts).Sum(k => DiffusionModelFolder.TrainFlops(folder.ExpertFile(k)));
        var routerFlops = DiffusionModelFolder.TrainFlops(folder.RouterFile);
        var systems = new List<DiffusionSystemResult>();
        using (var mono = new LocalDiffusionBackend([folder.CreateMonolith(plugins, CPU, services)], null, m.ImageSize))
        {
            systems.Add(await Measure("monolith", mono, 1, DiffusionModelFolder.TrainFlops(folder.MonolithFile)).ConfigureAwait(false));
        }
        var experts = Enumerable.Range(0, m.Experts).Select(k => folder.CreateExpert(plugins, k, CPU, services)).ToList();
        using (var ensemble = new LocalDiffusionBackend(experts, m.Experts > 1 ? folder.CreateRouter(plugins, CPU, services) : null, m.ImageSize))
        {
            var ks = new List<int> { m.Experts };
            if (m.Experts > 2) ks.Add(2);
            if (m.Experts > 1) ks.Add(1);
            foreach (var k in ks)
            {
                systems.Add(await Measure(k == m.Experts ? "ensemble-full" : $"ensemble-top{k}", ensemble, k, expertFlops + routerFlops).ConfigureAwait(false));
            }
        }
        var (oracle, partitionLosses, routerAccuracy) = Diagnose(folder, plugins, services, train, held, partition, noise, times);
        log?.Invoke($"oracle routing (each held-out image to its own partition's expert): held-out loss {oracle:F4}; router accuracy by t: " +
            string.Join(", ", routerAccuracy.Select(r => $"[{r.TimeFrom:F1},{r.TimeTo:F1}) {r.Accuracy:P0}")));
        return new DiffusionEvalReport(m.Dataset, m.ImageSize, m.Experts, m.Partitioning, sizes, options.Samples, options.Steps, accuracy, reference, systems)
        {
            Model = folder.Path,
            OracleLoss = oracle,
            PartitionLosses = partitionLosses,
            RouterAccuracy = routerAccuracy,
        };

        async Task<DiffusionSystemResult> Measure(string name, IDiffusionBackend backend, int topK, long trainFlops)
        {
            var lossRun = new DiffusionEnsemble(backend);
            var loss = await lossRun.LossAsync(held.Images, noise, times, topK).ConfigureAwait(false);
            var sampler = new DiffusionEnsemble(backend);
            using var samples = await sampler.SampleAsync(options.Samples, options.Steps, topK, options.Seed).ConfigureAwait(false);
            using var clamped = samples.clamp(-1, 1);
            using var features = classifier.Features(clamped);
            var fd = Frechet.Distance(features, heldFeatures);
            var coverage = DigitClassifier.ClassCoverage(classifier.Predict(clamped));
            var result = new DiffusionSystemResult(name, loss, fd, coverage, trainFlops, sampler.Flops / (double)options.Samples)
            {
                ExpertsPerStep = sampler.ExpertImageCalls / (double)options.Samples / options.Steps,
            };
            log?.Invoke($"{name}: held-out loss {loss:F4}, Fréchet {fd:F2}, coverage {coverage:P0}, sample {result.SampleFlopsPerImage / 1e6:F1} MFLOP/image");
            return result;
        }
    }

    /// <summary>Time bins of <see cref="DiffusionEvalReport.RouterAccuracy"/>.</summary>
    public const int RouterTimeBins = 5;

    /// <summary>
    /// Where an ensemble loses against the monolith: the held-out loss with oracle routing, each partition's expert
    /// against the monolith on that partition's held-out images, and the router's accuracy by noise level (same images,
    /// noise and times as the held-out loss).
    /// </summary>
    public static (double OracleLoss, IReadOnlyList<DiffusionPartitionLoss> Partitions, IReadOnlyList<DiffusionRouterAccuracy> Router) Diagnose(
        DiffusionModelFolder folder, PluginCatalog plugins, IServiceProvider services, DigitImages train, DigitImages held, IReadOnlyList<int> partition,
        Tensor noise, Tensor times)
    {
        ArgumentNullException.ThrowIfNull(folder);
        ArgumentNullException.ThrowIfNull(held);
        ArgumentNullException.ThrowIfNull(times);
        var m = folder.Manifest;
        var assigned = Partitioning.Assign(held, train, partition, m.Partitioning, m.Experts);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var xt = FlowMatching.Interpolate(held.Images, noise, times);
        var target = FlowMatching.Target(held.Images, noise);
        double[] PerImage(IDiffusionExpert e) => e.PredictVelocity(xt, times).sub(target).square().mean([1, 2, 3]).to_type(ScalarType.Float64).data<double>().ToArray();
        double[] mono;
        using (var monolith = folder.CreateMonolith(plugins, CPU, services))
        {
            mono = PerImage(monolith);
        }
        var oracle = new double[held.Count];
        var partitions = new List<DiffusionPartitionLoss>();
        for (var k = 0; k < m.Experts; k++)
        {
            using var expert = folder.CreateExpert(plugins, k, CPU, services);
            var own = PerImage(expert);
            var members = Enumerable.Range(0, held.Count).Where(i => assigned[i] == k).ToArray();
            foreach (var i in members) oracle[i] = own[i];
            partitions.Add(new DiffusionPartitionLoss(k, members.Length, members.Length == 0 ? double.NaN : members.Average(i => own[i]),
                members.Length == 0 ? double.NaN : members.Average(i => mono[i])));
        }
        var router = new List<DiffusionRouterAccuracy>();
        if (m.Experts > 1)
        {
            using var r = folder.CreateRouter(plugins, CPU, services);
            var choice = r.Logits(xt, times).argmax(1).data<long>().ToArray();
            var t = times.to_type(ScalarType.Float64).data<double>().ToArray();
            for (var b = 0; b < RouterTimeBins; b++)
            {
                double from = (double)b / RouterTimeBins, to = (double)(b + 1) / RouterTimeBins;
                var inBin = Enumerable.Range(0, held.Count).Where(i => t[i] >= from && (t[i] < to || b == RouterTimeBins - 1)).ToArray();
                router.Add(new DiffusionRouterAccuracy(from, to, inBin.Length, inBin.Length == 0 ? double.NaN : inBin.Count(i => choice[i] == assigned[i]) / (double)inBin.Length));
            }
        }
        return (oracle.Average(), partitions, router);
    }

    /// <summary>Samples from a model folder in this process (the reference for the distributed sampler).</summary>
    public static async Task<Tensor> SampleLocalAsync(DiffusionModelFolder folder, PluginCatalog plugins, IServiceProvider services, int count, int steps, int topK, long seed,
        bool monolith = false)
    {
        ArgumentNullException.ThrowIfNull(folder);
        var m = folder.Manifest;
        using var backend = monolith
            ? new LocalDiffusionBackend([folder.CreateMonolith(plugins, CPU, services)], null, m.ImageSize)
            : new LocalDiffusionBackend([.. Enumerable.Range(0, m.Experts).Select(k => folder.CreateExpert(plugins, k, CPU, services))],
                m.Experts > 1 ? folder.CreateRouter(plugins, CPU, services) : null, m.ImageSize);
        return await new DiffusionEnsemble(backend).SampleAsync(count, steps, monolith ? 1 : topK, seed).ConfigureAwait(false);
    }
}
