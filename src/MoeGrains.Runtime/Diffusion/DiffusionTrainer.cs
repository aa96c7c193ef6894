using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>Settings of one isolated training run (an expert, the monolith or the router).</summary>
public sealed record DiffusionTrainingOptions
{
    public int Steps { get; init; } = 1500;

    public int Batch { get; init; } = 64;

    public double LearningRate { get; init; } = 2e-3;

    /// <summary>Seeds the minibatches, times and noise (the weights' seed is the plugin context's).</summary>
    public long Seed { get; init; } = 1;

    /// <summary>Progress is reported every this many steps (and at the last).</summary>
    public int ReportEvery { get; init; } = 100;

    public void Validate()
    {
        if (Steps < 1) throw new ArgumentOutOfRangeException(nameof(Steps), $"Training needs at least one step, got {Steps}.");
        if (Batch < 1) throw new ArgumentOutOfRangeException(nameof(Batch), $"The batch must hold at least one image, got {Batch}.");
        if (!(LearningRate > 0)) throw new ArgumentOutOfRangeException(nameof(LearningRate), $"The learning rate must be positive, got {LearningRate}.");
    }
}

/// <summary>What a training run did: its last smoothed loss and its FLOPs (forward + backward ≈ 3 × forward).</summary>
public sealed record DiffusionTrainingResult(int Steps, long Images, double FinalLoss, long Flops);

/// <summary>
/// Trains flow-matching experts and the partition router, each from its own data and seed only: nothing is shared
/// between runs, so an expert's weights depend on its partition and its seeds alone.
/// </summary>
public static class DiffusionTrainer
{
    /// <summary>Trains <paramref name="expert"/> on <paramref name="images"/> with the flow-matching loss.</summary>
    public static DiffusionTrainingResult TrainExpert(IDiffusionExpert expert, Tensor images, DiffusionTrainingOptions options, Action<int, double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var n = images.shape[0];
        if (n < 1) throw new ArgumentException("An expert needs at least one training image; its partition is empty.", nameof(images));
        var result = Run(Parameters(expert), options, progress, (gen, batch) =>
        {
            var idx = randint(n, [batch], generator: gen);
            var clean = images.index_select(0, idx);
            var noise = randn(clean.shape, generator: gen);
            var t = rand(batch, generator: gen);
            var xt = FlowMatching.Interpolate(clean, noise, t);
            return FlowMatching.Loss(expert.PredictVelocity(xt, t), clean, noise);
        });
        return result with { Flops = 3L * result.Images * expert.FlopsPerImage };
    }

    /// <summary>
    /// Trains <paramref name="router"/> to classify the partition <paramref name="partition"/>[i] of each clean image
    /// from its noisy version at a random time (cross-entropy).
    /// </summary>
    public static DiffusionTrainingResult TrainRouter(IDiffusionRouter router, Tensor images, IReadOnlyList<int> partition, DiffusionTrainingOptions options,
        Action<int, double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(router);
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(partition);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var n = images.shape[0];
        if (partition.Count != n) throw new ArgumentException($"{partition.Count} partition labels for {n} images.", nameof(partition));
        using var labels = tensor(partition.Select(p => (long)p).ToArray());
        var result = Run(Parameters(router), options, progress, (gen, batch) =>
        {
            var idx = randint(n, [batch], generator: gen);
            var clean = images.index_select(0, idx);
            var noise = randn(clean.shape, generator: gen);
            var t = rand(batch, generator: gen);
            var xt = FlowMatching.Interpolate(clean, noise, t);
            return nn.functional.cross_entropy(router.Logits(xt, t), labels.index_select(0, idx));
        });
        return result with { Flops = 3L * result.Images * router.FlopsPerImage };
    }

    private static List<(string, Parameter)> Parameters(object plugin)
    {
        if (plugin is not IStateDict state)
        {
            throw new InvalidOperationException($"{plugin.GetType().Name} does not implement IStateDict, so it cannot be trained.");
        }
        var list = new List<(string, Parameter)>();
        foreach (var (name, t) in state.StateDict())
        {
            list.Add((name, t as Parameter ?? throw new InvalidOperationException($"{plugin.GetType().Name}: weight '{name}' is not a Parameter, so it cannot be trained.")));
        }
        return list;
    }

    private static DiffusionTrainingResult Run(List<(string Name, Parameter P)> parameters, DiffusionTrainingOptions options, Action<int, double>? progress,
        Func<Generator, int, Tensor> loss)
    {
        using var gen = new Generator((ulong)options.Seed);
        using var optimizer = new Training.AdamW(parameters, beta2: 0.99, weightDecay: 0);
        double smoothed = double.NaN;
        for (var step = 1; step <= options.Steps; step++)
        {
            using var scope = NewDisposeScope();
            foreach (var (_, p) in parameters)
            {
                p.grad?.zero_();
            }
            var l = loss(gen, options.Batch);
            l.backward();
            // Cosine decay to a tenth of the rate.
            var lr = options.LearningRate * (0.1 + 0.9 * 0.5 * (1 + Math.Cos(Math.PI * (step - 1) / options.Steps)));
            optimizer.Step(lr);
            var value = l.item<float>();
            smoothed = double.IsNaN(smoothed) ? value : 0.98 * smoothed + 0.02 * value;
            if (progress is not null && (step % Math.Max(1, options.ReportEvery) == 0 || step == options.Steps))
            {
                progress(step, smoothed);
            }
        }
        return new DiffusionTrainingResult(options.Steps, (long)options.Steps * options.Batch, smoothed, 0);
    }
}
