using MoeGrains.Checkpoints;
using MoeGrains.Models;
using static TorchSharp.torch;

namespace MoeGrains.Plugins;

/// <summary>Creates a model's experts and routers from plugins, with their weights from the checkpoint.</summary>
public static class PluginFactory
{
    public static IExpert CreateExpert(PluginCatalog plugins, ModelSpec spec, SafeTensorsFile? checkpoint, int layer, int expert, Device device, IServiceProvider services, long seed = 0)
    {
        var weights = checkpoint?.LoadPrefix(ModelSpec.ExpertPrefix(layer, expert), device);
        try
        {
            var context = new PluginContext
            {
                Id = $"{spec.Name}/{layer}/{expert}",
                Layer = layer,
                Index = expert,
                Device = device,
                Settings = spec.Settings,
                Weights = weights,
                Seed = seed,
            };
            return plugins.Create<IExpert>(spec.ExpertPlugin, PluginKind.Expert, context, services);
        }
        finally
        {
            // Plugins copy or take what they need; the loaded tensors are released here.
            if (weights is not null) foreach (var t in weights.Values) t.Dispose();
        }
    }

    public static IRouter CreateRouter(PluginCatalog plugins, ModelSpec spec, SafeTensorsFile? checkpoint, int layer, Device device, IServiceProvider services, string? routerPlugin, long seed = 0)
    {
        // A router name may carry settings for this instance (RouterNames: rank?rank_k=2, thor-seq?sequence_seed=7).
        var (plugin, overrides) = RouterNames.Parse(routerPlugin ?? spec.RouterPlugin);
        var settings = spec.Settings;
        if (overrides.Count > 0)
        {
            var merged = new Dictionary<string, string>(settings, StringComparer.Ordinal);
            foreach (var (k, v) in overrides) merged[k] = v;
            settings = merged;
        }
        var weights = checkpoint?.LoadPrefix(ModelSpec.RouterPrefix(layer), device);
        try
        {
            var context = new PluginContext
            {
                Id = $"{spec.Name}/{layer}/router",
                Layer = layer,
                Device = device,
                Settings = settings,
                Weights = weights,
                Seed = seed,
            };
            return plugins.Create<IRouter>(plugin, PluginKind.Router, context, services);
        }
        finally
        {
            if (weights is not null) foreach (var t in weights.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Writes a new checkpoint of the given sizes: every expert and router is created by its plugin from a seed and its
    /// weights exported (<see cref="IStateDict"/>) under Mixtral's tensor names, with the sizes in the metadata.
    /// </summary>
    public static ModelSpec CreateCheckpoint(PluginCatalog plugins, ModelSpec spec, string path, IServiceProvider services, long seed = 1234)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        var owned = new List<IDisposable>();
        try
        {
            for (var layer = 0; layer < spec.Layers; layer++)
            {
                var router = CreateRouter(plugins, spec, null, layer, CPU, services, null, seed + layer * 1000);
                owned.Add(router);
                Export(router, ModelSpec.RouterPrefix(layer), spec.RouterPlugin, tensors);
                for (var e = 0; e < spec.Experts; e++)
                {
                    var expert = CreateExpert(plugins, spec, null, layer, e, CPU, services, seed + layer * 1000 + e + 1);
                    owned.Add(expert);
                    Export(expert, ModelSpec.ExpertPrefix(layer, e), spec.ExpertPlugin, tensors);
                }
            }
            SafeTensorsFile.Write(path, tensors, spec.Settings);
            return spec with { Path = path };
        }
        finally
        {
            foreach (var o in owned) o.Dispose();
        }
    }

    private static void Export(object plugin, string prefix, string name, List<KeyValuePair<string, Tensor>> into)
    {
        if (plugin is not IStateDict state)
        {
            throw new InvalidOperationException($"Plugin '{name}' does not implement IStateDict, so its weights cannot be written to a checkpoint.");
        }
        foreach (var (key, value) in state.StateDict())
        {
            into.Add(new(prefix + key, value));
        }
    }
}
