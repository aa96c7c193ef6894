using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Cluster;

/// <summary>Three real silos in this process, serving a tiny SwiGLU model; shared by the cluster tests.</summary>
public sealed class ClusterFixture() : LocalClusterFixture(3)
{
    public ModelSpec Spec { get; private set; } = null!;

    public string CheckpointPath => Dir.File("tiny.safetensors");

    /// <summary>A copy of the checkpoint served as model "spare", for tests that damage and repair the file.</summary>
    public string SparePath => Dir.File("spare.safetensors");

    protected override void Prepare()
    {
        Spec = TinyModel.Create(CheckpointPath);
        File.Copy(CheckpointPath, SparePath);
    }

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o =>
        {
            o.Device = "cpu";
            o.Models["tiny"] = CheckpointPath;
            o.Models["spare"] = SparePath;
            o.ExpertTimeoutMs = 20_000;
        })
        .AddExpertPlugins(TestPaths.Plugins);
}

[CollectionDefinition(Name)]
public sealed class ClusterCollection : ICollectionFixture<ClusterFixture>
{
    public const string Name = "cluster";
}
