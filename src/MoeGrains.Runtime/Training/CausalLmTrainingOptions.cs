namespace MoeGrains.Training;

/// <summary>How a causal language model is trained: batches, optimizer, schedule, evaluation and checkpoints.</summary>
public sealed class CausalLmTrainingOptions
{
    public const int DEFAULT_STEPS = 2000;

    /// <summary>Optimizer steps (default 2000). The schedule ends here, or at <see cref="TimeBudget"/> when that comes first.</summary>
    public int Steps { get; set; } = DEFAULT_STEPS;

    /// <summary>Windows per batch (default 32).</summary>
    public int BatchSize { get; set; } = 32;

    /// <summary>Tokens per window (default 128); at most the model's context.</summary>
    public int BlockSize { get; set; } = 128;

    /// <summary>Peak learning rate of AdamW (default 3e-3).</summary>
    public double LearningRate { get; set; } = 3e-3;

    /// <summary>The cosine decay ends at this fraction of the peak (default 0.1).</summary>
    public double MinLearningRateRatio { get; set; } = 0.1;

    /// <summary>Steps of linear warm-up (default 100).</summary>
    public int WarmupSteps { get; set; } = 100;

    public double WeightDecay { get; set; } = 0.1;

    public double Beta1 { get; set; } = 0.9;

    public double Beta2 { get; set; } = 0.99;

    /// <summary>Gradients are clipped to this global norm (default 1; 0 turns clipping off).</summary>
    public double GradientClip { get; set; } = 1.0;

    /// <summary>Held-out evaluation every this many steps (default 250; 0: only at the end).</summary>
    public int EvalEvery { get; set; } = 250;

    /// <summary>Windows of the held-out text evaluated periodically (default 48; the final evaluation covers all of it).</summary>
    public int EvalWindows { get; set; } = 48;

    /// <summary>A checkpoint every this many steps (default 500), and always at the end.</summary>
    public int CheckpointEvery { get; set; } = 500;

    /// <summary>A progress event every this many steps (default 10).</summary>
    public int LogEvery { get; set; } = 10;

    /// <summary>Seed of the initialisation (used by the caller) and of the batches.</summary>
    public long Seed { get; set; } = 1337;

    /// <summary>Wall-clock budget: training stops, with the schedule fully decayed, once it is spent. Null: steps only.</summary>
    public TimeSpan? TimeBudget { get; set; }

    /// <summary>Evaluate the whole held-out text at the end (default true).</summary>
    public bool FinalFullEvaluation { get; set; } = true;

    public string? Validate()
    {
        if (Steps < 1) return "steps must be positive";
        if (BatchSize < 1 || BlockSize < 2) return "the batch size must be positive and the block at least 2 tokens";
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) return "the learning rate must be positive";
        if (MinLearningRateRatio is < 0 or > 1) return "the minimum learning-rate ratio must be in [0, 1]";
        if (WarmupSteps < 0 || EvalEvery < 0 || CheckpointEvery < 0 || LogEvery < 1 || EvalWindows < 1) return "warm-up, eval-every and checkpoint-every must not be negative, log-every and eval windows positive";
        if (Beta1 is < 0 or >= 1 || Beta2 is < 0 or >= 1) return "the Adam betas must be in [0, 1)";
        if (WeightDecay < 0 || GradientClip < 0) return "weight decay and gradient clip must not be negative";
        if (TimeBudget is { } t && t <= TimeSpan.Zero) return "the time budget must be positive";
        return null;
    }
}
