using MoeGrains.Hosting;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Model;

/// <summary>Two real silos in this process serving a tiny Mixtral-style language model as <c>lm</c>.</summary>
public sealed class LanguageModelClusterFixture : IAsyncLifetime
{
    private readonly TempFolder _dir = TestPaths.Temp();

    public LocalCluster Cluster { get; private set; } = null!;

    public string CheckpointPath { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        CheckpointPath = TinyLanguageModel.Write(_dir.Path, seed: 21, experts: 6);
        Cluster = await LocalCluster.StartAsync(2, (_, silo) => silo
            .AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.Models["lm"] = CheckpointPath;
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
public sealed class LanguageModelClusterCollection : ICollectionFixture<LanguageModelClusterFixture>
{
    public const string Name = "language-model-cluster";
}
