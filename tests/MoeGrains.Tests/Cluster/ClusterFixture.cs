using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Cluster;

/// <summary>Three real silos in this process, serving a tiny SwiGLU model; shared by the cluster tests.</summary>
public sealed class ClusterFixture : IAsyncLifetime
{
    private readonly TempFolder _dir = TestPaths.Temp();

    public LocalCluster Cluster { get; private set; } = null!;

    public ModelSpec Spec { get; private set; } = null!;

    public string CheckpointPath => _dir.File("tiny.safetensors");

    /// <summary>A copy of the checkpoint served as model "spare", for tests that damage and repair the file.</summary>
    public string SparePath => _dir.File("spare.safetensors");

    public async Task InitializeAsync()
    {
        Spec = TinyModel.Create(CheckpointPath);
        File.Copy(CheckpointPath, SparePath);
        Cluster = await LocalCluster.StartAsync(3, (_, silo) => silo
            .AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.Models["tiny"] = CheckpointPath;
                o.Models["spare"] = SparePath;
                o.ExpertTimeoutMs = 20_000;
            })
            .AddExpertPlugins(TestPaths.Plugins));
    }

    public async Task DisposeAsync()
    {
        await Cluster.DisposeAsync();
        _dir.Dispose();
    }
}

[CollectionDefinition(Name)]
public sealed class ClusterCollection : ICollectionFixture<ClusterFixture>
{
    public const string Name = "cluster";
}
