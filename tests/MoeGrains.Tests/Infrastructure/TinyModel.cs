using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using MoeGrains.Models;
using MoeGrains.Plugins;

namespace MoeGrains.Tests.Infrastructure;

/// <summary>Small SwiGLU/top-k checkpoints written by the built-in plugin, for fast tests.</summary>
internal static class TinyModel
{
    public static IServiceProvider Services { get; } = new ServiceCollection().AddLogging(b => b.SetMinimumLevel(LogLevel.Warning)).BuildServiceProvider();

    public static PluginCatalog BuiltIn() => PluginCatalog.Load(TestPaths.Plugins);

    public static ModelSpec Create(string path, int layers = 2, int experts = 8, int dModel = 32, int dFf = 64, int topK = 2, long seed = 7) =>
        PluginFactory.CreateCheckpoint(BuiltIn(), new ModelSpec("tiny", layers, experts, dModel, dFf, topK, "swiglu", "topk"), path, Services, seed);
}
