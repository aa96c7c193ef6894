using MoeGrains.Plugins;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

/// <summary>The retrieval plugin, loaded from the plugin folder the way a silo loads it.</summary>
internal static class RetrieverPlugins
{
    private static readonly Lazy<PluginCatalog> LazyCatalog = new(() => PluginCatalog.Load(TestPaths.Plugins));

    public static PluginCatalog Catalog => LazyCatalog.Value;

    public static IRetrieverExpert Create(string name, Dictionary<string, string>? settings = null) =>
        Catalog.Create<IRetrieverExpert>(name, PluginKind.RetrieverExpert,
            new PluginContext { Id = $"test/{name}", Device = CPU, Settings = settings ?? [] }, TinyModel.Services);
}
