using MoeGrains.Hosting;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Model;

/// <summary>Two real silos in this process serving a tiny Mixtral-style language model as <c>lm</c>.</summary>
public sealed class LanguageModelClusterFixture() : LocalClusterFixture(2)
{
    public string CheckpointPath { get; private set; } = null!;

    protected override void Prepare()
    {
        CheckpointPath = TinyLanguageModel.Write(Dir.Path, seed: 21, experts: 6);
    }

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o =>
        {
            o.Device = "cpu";
            o.Models["lm"] = CheckpointPath;
            o.ExpertTimeoutMs = 20_000;
        })
        .AddExpertPlugins(TestPaths.Plugins);
}

[CollectionDefinition(Name)]
public sealed class LanguageModelClusterCollection : ICollectionFixture<LanguageModelClusterFixture>
{
    public const string Name = "language-model-cluster";
}
