using System.Reflection;
using System.Runtime.Loader;

namespace MoeGrains.Plugins;

/// <summary>
/// One load context per plugin. The contract (MoeGrains.Abstractions), TorchSharp, Microsoft.Extensions.* and the
/// framework come from the host, so that plugin types implement the host's interfaces and share one libtorch.
/// </summary>
internal sealed class PluginLoadContext(string mainAssemblyPath, PluginTrust? trust = null) : AssemblyLoadContext($"plugin:{Path.GetFileNameWithoutExtension(mainAssemblyPath)}")
{
    private readonly AssemblyDependencyResolver _resolver = new(mainAssemblyPath);

    public static bool IsShared(string? name) =>
        name is not null &&
        (name == "MoeGrains.Abstractions" || name == "TorchSharp" || name == "netstandard" ||
         name.StartsWith("Microsoft.Extensions.", StringComparison.Ordinal) ||
         name.StartsWith("System.", StringComparison.Ordinal) || name == "System" || name == "mscorlib");

    protected override Assembly? Load(AssemblyName assemblyName)
    {
        if (IsShared(assemblyName.Name))
        {
            return null; // resolve from the host
        }
        var path = _resolver.ResolveAssemblyToPath(assemblyName);
        if (path is null)
        {
            return null;
        }
        if (trust is not null && !trust.IsTrusted(path, out var hash))
        {
            throw new UntrustedPluginException($"Dependency {path} refused: its SHA-256 {hash} is not in MoeGrains:TrustedPluginSha256.");
        }
        return LoadFromAssemblyPath(path);
    }

    protected override IntPtr LoadUnmanagedDll(string unmanagedDllName)
    {
        var path = _resolver.ResolveUnmanagedDllToPath(unmanagedDllName);
        if (path is not null && trust is not null && !trust.IsTrusted(path, out var hash))
        {
            throw new UntrustedPluginException($"Native library {path} refused: its SHA-256 {hash} is not in MoeGrains:TrustedPluginSha256.");
        }
        return path is null ? IntPtr.Zero : LoadUnmanagedDllFromPath(path);
    }
}
