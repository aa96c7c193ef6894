using MoeGrains.Contracts;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Retrieval.Serving;

/// <summary>
/// Creates a served retriever expert by name: a plugin of that name, or a trained domain adapter saved as
/// <c>{adapters}/{name}.safetensors</c> (<see cref="LinearAdapterExpert.Save"/>), validated and handed as weights to
/// the plugin its metadata names (<c>minilm-adapter</c>, ...).
/// </summary>
public static class RetrieverExperts
{
    /// <summary>The adapter file serving <paramref name="name"/>, or null when it is not an adapter of <paramref name="adapters"/>.</summary>
    public static string? AdapterFile(PluginCatalog plugins, string name, string? adapters)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        if (adapters is not { Length: > 0 } || plugins.TryGet(name, out _))
        {
            return null;
        }
        var path = LinearAdapterExpert.FileFor(adapters, name);
        return File.Exists(path) || name.StartsWith("adapter-", StringComparison.Ordinal) ? path : null;
    }

    /// <summary>The base expert (whose document embeddings it shares) of an adapter served as <paramref name="name"/>, or null.</summary>
    public static string? AdapterBase(PluginCatalog plugins, string name, string? adapters)
    {
        if (AdapterFile(plugins, name, adapters) is not { } path || !File.Exists(path))
        {
            return null;
        }
        var (weight, metadata) = LinearAdapterExpert.ReadFile(path);
        weight.Dispose();
        return metadata[LinearAdapterExpert.BASE_KEY];
    }

    /// <summary>Creates the expert served as <paramref name="name"/> on <paramref name="device"/>.</summary>
    /// <exception cref="CheckpointException">An adapter's file is missing or unusable (the message names it).</exception>
    /// <exception cref="UnknownExpertException">No plugin of that name (or of the adapter's plugin) is loaded.</exception>
    public static IRetrieverExpert Create(PluginCatalog plugins, string name, Device device, IReadOnlyDictionary<string, string> settings,
        IServiceProvider services, string? adapters, string idPrefix = "retrieval")
    {
        ArgumentNullException.ThrowIfNull(plugins);
        ArgumentNullException.ThrowIfNull(settings);
        if (AdapterFile(plugins, name, adapters) is not { } path)
        {
            var context = new PluginContext { Id = $"{idPrefix}/{name}", Device = device, Settings = settings };
            return plugins.Create<IRetrieverExpert>(name, PluginKind.RetrieverExpert, context, services);
        }
        var (weight, metadata) = LinearAdapterExpert.ReadFile(path);
        using (weight)
        {
            var plugin = metadata.TryGetValue(LinearAdapterExpert.PLUGIN_KEY, out var p) && p.Length > 0 ? p : metadata[LinearAdapterExpert.BASE_KEY] + "-adapter";
            using var onDevice = weight.to(device);
            var context = new PluginContext
            {
                Id = $"{idPrefix}/{name}",
                Device = device,
                Settings = new Dictionary<string, string>(settings) { ["name"] = name },
                Weights = new Dictionary<string, Tensor> { [LinearAdapterExpert.WEIGHT_NAME] = onDevice },
            };
            return plugins.Create<IRetrieverExpert>(plugin, PluginKind.RetrieverExpert, context, services);
        }
    }
}
