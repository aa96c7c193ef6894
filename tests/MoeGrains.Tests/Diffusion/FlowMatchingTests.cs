using MoeGrains.Diffusion;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Diffusion;

public sealed class FlowMatchingTests
{
    /// <summary>The exact flow of a point mass at c: every path is the straight line from its noise to c, so v = (x - c) / t.</summary>
    private sealed class PointMassFlow(Tensor point) : IDiffusionExpert
    {
        public ExpertDescriptor Descriptor { get; } = new("point-mass", ExpertKind.Diffusion, 4, 4, 0, "float32");

        public int Calls { get; private set; }

        public Tensor PredictVelocity(Tensor noisy, Tensor time)
        {
            Calls++;
            return noisy.sub(point).div(time.reshape(-1, 1, 1, 1));
        }

        public void Dispose()
        {
        }
    }

    private sealed class Backend(IDiffusionExpert expert) : IDiffusionBackend
    {
        public int Experts => 1;
        public int ImageSize => 2;
        public long ExpertFlopsPerImage => 10;
        public long RouterFlopsPerImage => 0;
        public Task<Tensor> VelocityAsync(int e, Tensor noisy, Tensor time) => Task.FromResult(expert.PredictVelocity(noisy, time));
        public Task<Tensor> RouterLogitsAsync(Tensor noisy, Tensor time) => throw new InvalidOperationException("one expert needs no router");
    }

    [Fact]
    public void Loss_is_the_mean_squared_error_to_noise_minus_data()
    {
        using var scope = NewDisposeScope();
        var clean = tensor(new float[] { 1, 2, 3, 4 }).reshape(1, 1, 2, 2);
        var noise = tensor(new float[] { 0, 0, 1, 1 }).reshape(1, 1, 2, 2);
        var t = tensor(new float[] { 0.25f });
        // x_t = 0.75 x0 + 0.25 ε
        Assert.Equal(new[] { 0.75f, 1.5f, 2.5f, 3.25f }, FlowMatching.Interpolate(clean, noise, t).data<float>().ToArray());
        // target ε - x0 = [-1, -2, -2, -3]; a zero prediction costs (1 + 4 + 4 + 9) / 4 = 4.5, the target itself 0.
        Assert.Equal(4.5f, FlowMatching.Loss(zeros_like(clean), clean, noise).item<float>(), 5);
        Assert.Equal(0f, FlowMatching.Loss(noise.sub(clean), clean, noise).item<float>(), 6);
    }

    [Fact]
    public async Task Euler_sampling_with_the_exact_flow_of_a_point_mass_lands_on_the_point()
    {
        using var scope = NewDisposeScope();
        var point = tensor(new float[] { 0.5f, -0.25f, 1f, 0f }).reshape(1, 1, 2, 2);
        using var expert = new PointMassFlow(point);
        var ensemble = new DiffusionEnsemble(new Backend(expert));
        var samples = await ensemble.SampleAsync(count: 3, steps: 7, topK: 1, seed: 5);
        Assert.Equal(new long[] { 3, 1, 2, 2 }, samples.shape);
        // Each Euler step follows the straight path exactly, so every sample ends on the point.
        Assert.True(samples.sub(point).abs().max().item<float>() < 1e-5f);
        Assert.Equal(7, expert.Calls);
        Assert.Equal(3L * 7, ensemble.ExpertImageCalls);
        Assert.Equal(3L * 7 * 10, ensemble.Flops);
    }

    [Fact]
    public void The_time_grid_runs_from_noise_to_data_and_refuses_zero_steps()
    {
        Assert.Equal(new[] { 1.0, 0.5, 0.0 }, FlowMatching.TimeGrid(2));
        Assert.Throws<ArgumentOutOfRangeException>(() => FlowMatching.TimeGrid(0));
    }
}
