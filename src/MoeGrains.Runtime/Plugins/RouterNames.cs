using System.Globalization;
using System.Text;

namespace MoeGrains.Plugins;

/// <summary>
/// A router as the runtime names it between its parts: a router plugin's name, optionally followed by settings that
/// override the checkpoint's for that instance, <c>rank?rank_k=2</c> or <c>thor-seq?sequence_seed=7</c>. The name travels
/// in <c>MoeLayerRequest.Router</c>, so requests with different settings are never batched together and the layer's
/// router worker keeps one instance per name. Clients name plain plugins only (the request validator accepts nothing
/// else); the runtime adds the settings (SCMoE's weak rank, a per-sequence router's seed).
/// </summary>
public static class RouterNames
{
    /// <summary>The plugin's name and the settings of <paramref name="name"/> (none for a plain plugin name).</summary>
    public static (string Plugin, IReadOnlyDictionary<string, string> Settings) Parse(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var q = name.IndexOf('?', StringComparison.Ordinal);
        if (q < 0)
        {
            return (name, new Dictionary<string, string>());
        }
        var settings = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in name[(q + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new ArgumentException($"Router '{name}': '{pair}' is not key=value.", nameof(name));
            }
            settings[pair[..eq]] = pair[(eq + 1)..];
        }
        return (name[..q], settings);
    }

    /// <summary><paramref name="plugin"/> with <paramref name="settings"/> (in the order given).</summary>
    public static string With(string plugin, params (string Key, object Value)[] settings)
    {
        ArgumentNullException.ThrowIfNull(plugin);
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.Length == 0)
        {
            return plugin;
        }
        var sb = new StringBuilder(plugin).Append('?');
        for (var i = 0; i < settings.Length; i++)
        {
            if (i > 0) sb.Append('&');
            sb.Append(settings[i].Key).Append('=').Append(Convert.ToString(settings[i].Value, CultureInfo.InvariantCulture));
        }
        return sb.ToString();
    }

    /// <summary>Whether <paramref name="name"/> carries settings (an instance made for one request or sequence).</summary>
    public static bool HasSettings(string name) => name.Contains('?', StringComparison.Ordinal);

    /// <summary>
    /// The router one sequence routes with: <paramref name="router"/> itself, or, when it names a per-sequence router
    /// plugin (<see cref="RouterAttribute.PerSequence"/>), that router with the sequence's seed, so the sequence's
    /// draw is the same wherever the router runs (in process, or in a layer's router worker shared by sessions).
    /// </summary>
    public static string? ForSequence(string? router, string modelRouter, PluginCatalog plugins, long sequenceSeed)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        var name = router ?? modelRouter;
        if (HasSettings(name) || !plugins.TryGet(name, out var entry) || !entry.PerSequence)
        {
            return router;
        }
        return With(name, (RouterAttribute.SequenceSeedSetting, sequenceSeed & 0x7FFFFFFF));
    }

    /// <summary>A seed for a sequence from a text key (FNV-1a; the same in every process).</summary>
    public static long Seed(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        ulong h = 14695981039346656037UL;
        foreach (var c in key)
        {
            h = (h ^ c) * 1099511628211UL;
        }
        return (long)(h & 0x7FFFFFFF);
    }
}
