namespace MoeGrains.Training;

/// <summary>Something that happened during training, reported as it happens.</summary>
public abstract record TrainingEvent(long Step);

/// <summary>Progress: the mean losses since the last report, speed and the estimated time left.</summary>
public sealed record TrainingProgress(long Step, int Steps, double Loss, double LanguageModelLoss, double AuxiliaryLoss, double LearningRate,
    double TokensPerSecond, TimeSpan Elapsed, TimeSpan Remaining) : TrainingEvent(Step);

/// <summary>Mean cross-entropy (nats per token) over held-out windows.</summary>
public sealed record HeldOutEvaluation(long Step, double Loss, long Tokens, bool Full, TimeSpan Elapsed) : TrainingEvent(Step);

public sealed record CheckpointWritten(long Step, string Folder) : TrainingEvent(Step);

public sealed record TrainingResumed(long Step, TimeSpan Elapsed) : TrainingEvent(Step);

/// <summary>What a training run reached.</summary>
public sealed record TrainingSummary(long Steps, long Tokens, TimeSpan TrainingTime, TimeSpan TotalTime, double TokensPerSecond,
    double FinalTrainingLoss, double HeldOutLoss, long HeldOutTokens, bool StoppedByTimeBudget);
