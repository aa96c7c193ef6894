using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Diffusion;
using MoeGrains.Plugins;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Hosting;

namespace MoeGrains.Tests.Diffusion;

/// <summary>The shared digits folder, the plugin folder (with the conv denoiser) and tiny model folders for the diffusion tests.</summary>
internal static class DiffusionTestData
{
    public static string Digits => SharedData.Directory("digits");

    public static PluginCatalog Plugins { get; } = PluginCatalog.Load(TestPaths.Plugins);

    public static IServiceProvider Services { get; } = new ServiceCollection().AddLogging().BuildServiceProvider();

    /// <summary>A tiny manifest: 8×8 optdigits, 4 hidden channels, a few steps.</summary>
    public static DiffusionManifest Tiny(int experts, long seed = 1) => new()
    {
        Dataset = DigitData.OptDigits,
        ImageSize = 8,
        Experts = experts,
        HiddenChannels = 4,
        RouterChannels = 4,
        Steps = 4,
        RouterSteps = 4,
        Batch = 8,
        Seed = seed,
    };

    /// <summary>A model folder whose experts, router and monolith are freshly initialised from their seeds (untrained), written as checkpoints.</summary>
    public static DiffusionModelFolder Untrained(string path, int experts)
    {
        var folder = DiffusionModelFolder.Create(path, Tiny(experts));
        var m = folder.Manifest;
        for (var k = -1; k < experts; k++)
        {
            using var e = Plugins.Create<IDiffusionExpert>(m.ExpertPlugin, PluginKind.DiffusionExpert, folder.FreshContext($"e{k}", k, m.SeedOf(k)), Services);
            folder.Save(k < 0 ? folder.MonolithFile : folder.ExpertFile(k), (IStateDict)e, m.ExpertPlugin, "test", 0);
        }
        using var r = Plugins.Create<IDiffusionRouter>(m.RouterPlugin, PluginKind.DiffusionRouter, folder.FreshContext("router", -1, m.SeedOf(-2)), Services);
        folder.Save(folder.RouterFile, (IStateDict)r, m.RouterPlugin, "test", 0);
        folder.WritePartition([.. Enumerable.Range(0, 3823).Select(i => i % experts)]);
        return folder;
    }
}
