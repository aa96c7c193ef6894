using System.Security.Cryptography;

namespace MoeGrains.Plugins;

/// <summary>
/// The optional allow-list of plugin files by SHA-256. An <see cref="System.Runtime.Loader.AssemblyLoadContext"/> is not a
/// security boundary: a loaded plugin runs with the silo's rights, so the only protection is not loading unknown code.
/// </summary>
internal sealed class PluginTrust
{
    private readonly HashSet<string> _trusted;

    private PluginTrust(IEnumerable<string> hashes) => _trusted = new HashSet<string>(hashes.Select(h => h.Trim().ToLowerInvariant()), StringComparer.Ordinal);

    public static PluginTrust? Create(IReadOnlyCollection<string>? hashes) => hashes is { Count: > 0 } ? new PluginTrust(hashes) : null;

    public static string Hash(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    public bool IsTrusted(string path, out string hash)
    {
        hash = Hash(path);
        return _trusted.Contains(hash);
    }
}

/// <summary>A plugin file is not in the configured allow-list.</summary>
public sealed class UntrustedPluginException(string message) : Exception(message);
