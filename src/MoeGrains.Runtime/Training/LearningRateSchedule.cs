namespace MoeGrains.Training;

/// <summary>Linear warm-up to the peak, then a cosine decay to <c>peak × minRatio</c> at the end of training.</summary>
public sealed record LearningRateSchedule(double Peak, int WarmupSteps, double MinRatio)
{
    /// <summary>The rate at <paramref name="step"/> (from 0) when <paramref name="progress"/> of training (0..1) is done.</summary>
    public double At(long step, double progress)
    {
        if (step < WarmupSteps)
        {
            return Peak * (step + 1) / WarmupSteps;
        }
        var p = Math.Clamp(progress, 0, 1);
        var min = Peak * MinRatio;
        return min + 0.5 * (Peak - min) * (1 + Math.Cos(Math.PI * p));
    }
}
