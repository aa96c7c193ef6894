using MoeGrains.Contracts;
using MoeGrains.Diffusion;
using MoeGrains.Hosting;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Diffusion;

/// <summary>Two real silos serving a tiny 3-expert diffusion model (untrained, seeded weights from checkpoints).</summary>
public sealed class DiffusionClusterFixture() : LocalClusterFixture(2)
{
    public DiffusionModelFolder Folder { get; private set; } = null!;

    protected override void Prepare()
    {
        Folder = DiffusionTestData.Untrained(Dir.File("tiny"), 3);
    }

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o => o.Device = "cpu")
        .AddExpertPlugins(TestPaths.Plugins)
        .AddDiffusion(o => o.Models["tiny"] = Folder.Path);
}

public sealed class DiffusionClusterTests(DiffusionClusterFixture fixture) : IClassFixture<DiffusionClusterFixture>
{
    [Theory]
    [InlineData(1)]
    [InlineData(0)]
    public async Task Sampling_across_silos_equals_sampling_in_process_with_the_same_seed(int topK)
    {
        var request = new DiffusionSampleRequest(Count: 5, Steps: 4, TopK: topK, Seed: 42);
        var (remote, ensemble, backend) = await ClusterDiffusionSampler.SampleAsync(fixture.Cluster.GrainFactory, "tiny", 3, request);
        using (remote)
        using (var local = await DiffusionEvaluation.SampleLocalAsync(fixture.Folder, DiffusionTestData.Plugins, DiffusionTestData.Services, 5, 4, topK == 0 ? 3 : topK, 42))
        {
            Assert.Equal(local.shape, remote.shape);
            Assert.True(remote.sub(local).abs().max().item<float>() < 1e-4f, "the distributed samples differ from the in-process ones");
        }
        Assert.Equal(topK == 0 ? 5L * 4 * 3 : 5L * 4, ensemble.ExpertImageCalls);
        if (topK == 0)
        {
            // Every expert answered, and expert k sits on silo k mod 2: two silos took part.
            var silos = backend.ExpertSilos.Select(s => s[(s.IndexOf('@') + 2)..]).Distinct().ToList();
            Assert.Equal(3, backend.ExpertSilos.Count);
            Assert.Equal(2, silos.Count);
        }
    }

    [Fact]
    public async Task Bad_requests_get_typed_errors_naming_the_problem()
    {
        var grains = fixture.Cluster.GrainFactory;
        var n0 = await Assert.ThrowsAsync<DiffusionRequestException>(() => ClusterDiffusionSampler.SampleAsync(grains, "tiny", 3, new DiffusionSampleRequest(0, 4, 1, 1)));
        Assert.Contains("n must be", n0.Message);
        Assert.Equal("n", n0.Field);
        await Assert.ThrowsAsync<DiffusionRequestException>(() => ClusterDiffusionSampler.SampleAsync(grains, "tiny", 3, new DiffusionSampleRequest(100_000, 4, 1, 1)));
        var k = await Assert.ThrowsAsync<DiffusionRequestException>(() => ClusterDiffusionSampler.SampleAsync(grains, "tiny", 3, new DiffusionSampleRequest(2, 4, 7, 1)));
        Assert.Contains("top_k", k.Message);
        Assert.Equal("top_k", k.Field);

        using var wrong = zeros(2, 1, 5, 5);
        using var t = zeros(2);
        var size = await Assert.ThrowsAsync<DiffusionRequestException>(() =>
            grains.GetGrain<IDiffusionExpertGrain>("tiny/0").PredictVelocity(WireTensor.FromTensor(wrong), WireTensor.FromTensor(t)));
        Assert.Contains("[batch, 1, 8, 8]", size.Message);

        using var right = zeros(2, 1, 8, 8);
        var unknown = await Assert.ThrowsAsync<UnknownExpertException>(() =>
            grains.GetGrain<IDiffusionExpertGrain>("tiny/9").PredictVelocity(WireTensor.FromTensor(right), WireTensor.FromTensor(t)));
        Assert.Contains("no expert 9", unknown.Message);
        var model = await Assert.ThrowsAsync<UnknownExpertException>(() => grains.GetGrain<IDiffusionExpertGrain>("nope/0").Describe());
        Assert.Contains("nope", model.Message);

        // The silo still serves after the refusals.
        var info = await grains.GetGrain<IDiffusionExpertGrain>("tiny/1").Describe();
        Assert.Equal(8, info.ImageSize);
        Assert.True(info.FlopsPerImage > 0);
    }
}
