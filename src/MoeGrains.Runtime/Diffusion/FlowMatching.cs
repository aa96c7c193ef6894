using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>
/// Linear flow matching: <c>x_t = (1 - t) x_0 + t ε</c> with t = 0 the data and t = 1 noise; the conditional velocity
/// is <c>ε - x_0</c>. Sampling integrates <c>dx/dt = v(x, t)</c> from t = 1 to 0 with Euler steps.
/// </summary>
public static class FlowMatching
{
    /// <summary><c>x_t</c> for images <c>[b, c, h, w]</c>, noise like them and times <c>[b]</c>.</summary>
    public static Tensor Interpolate(Tensor clean, Tensor noise, Tensor time)
    {
        var t = time.reshape(-1, 1, 1, 1);
        return clean.mul(t.neg().add(Scalars.One, Scalars.One)).add_(noise.mul(t), Scalars.One);
    }

    /// <summary>The conditional velocity target <c>ε - x_0</c>.</summary>
    public static Tensor Target(Tensor clean, Tensor noise) => noise.sub(clean);

    /// <summary>The flow-matching loss: mean squared error of a predicted velocity against <c>ε - x_0</c>.</summary>
    public static Tensor Loss(Tensor predicted, Tensor clean, Tensor noise) => nn.functional.mse_loss(predicted, Target(clean, noise));

    /// <summary>The Euler time grid from 1 to 0 in <paramref name="steps"/> equal steps: <c>steps + 1</c> times.</summary>
    public static double[] TimeGrid(int steps)
    {
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), $"At least one sampling step is needed, got {steps}.");
        return [.. Enumerable.Range(0, steps + 1).Select(i => 1.0 - (double)i / steps)];
    }

    /// <summary>
    /// Euler integration from <paramref name="noise"/> at t = 1 to t = 0 with the velocity <paramref name="velocity"/>
    /// (called with x and the batch's times).
    /// </summary>
    public static async Task<Tensor> SampleAsync(Tensor noise, int steps, Func<Tensor, Tensor, Task<Tensor>> velocity)
    {
        ArgumentNullException.ThrowIfNull(noise);
        ArgumentNullException.ThrowIfNull(velocity);
        var grid = TimeGrid(steps);
        var x = noise.clone();
        for (var i = 0; i < steps; i++)
        {
            // Scalars held across the calls (a temporary one can be finalized while libtorch reads it).
            using TorchSharp.Scalar time = grid[i], dt = grid[i] - grid[i + 1];
            using var t = full(noise.shape[0], time, ScalarType.Float32);
            using var v = await velocity(x, t).ConfigureAwait(false);
            var next = x.sub(v.mul(dt));
            x.Dispose();
            x = next;
        }
        return x;
    }
}
