using System.Reflection;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using MoeGrains.Contracts;

namespace MoeGrains.Plugins;

/// <summary>What a plugin type provides.</summary>
public enum PluginKind
{
    Expert,
    Router,
    RetrieverExpert,
    DiffusionExpert,
    DiffusionRouter,
}

/// <summary>A plugin type found in the plugin folder.</summary>
public sealed record PluginEntry(string Name, PluginKind Kind, Type Type, string File, string? Description)
{
    /// <summary>A router that draws per sequence (<see cref="RouterAttribute.PerSequence"/>).</summary>
    public bool PerSequence { get; init; }
}

/// <summary>A plugin file or type that could not be used, and why.</summary>
public sealed record PluginLoadError(string File, string? Type, string Message)
{
    public override string ToString() => Type is null ? $"{File}: {Message}" : $"{File} ({Type}): {Message}";
}

/// <summary>
/// The plugins of a folder: each assembly (or each sub-folder, with its dependencies) is loaded into its own load
/// context, and every class marked <see cref="ExpertAttribute"/> or <see cref="RouterAttribute"/> is registered by name.
/// A bad file or type is recorded as a <see cref="PluginLoadError"/>; the other plugins still load.
/// </summary>
public sealed class PluginCatalog
{
    private readonly Dictionary<string, PluginEntry> _entries = new(StringComparer.OrdinalIgnoreCase);
    private readonly List<PluginLoadError> _errors = [];
    private PluginTrust? _trust;

    public IReadOnlyCollection<PluginEntry> Entries => _entries.Values;

    public IReadOnlyList<PluginLoadError> Errors => _errors;

    /// <summary>Loads the plugins of <paramref name="folder"/>; a missing folder is an empty catalog with one error.</summary>
    /// <param name="trustedSha256">When not empty, only files whose SHA-256 (hex) is listed are loaded; others are refused before loading.</param>
    public static PluginCatalog Load(string folder, ILogger? logger = null, IReadOnlyCollection<string>? trustedSha256 = null)
    {
        var catalog = new PluginCatalog { _trust = PluginTrust.Create(trustedSha256) };
        var full = Path.GetFullPath(folder);
        if (!Directory.Exists(full))
        {
            catalog._errors.Add(new PluginLoadError(full, null, "the plugin folder does not exist"));
            return catalog;
        }
        foreach (var dll in Directory.EnumerateFiles(full, "*.dll").Order(StringComparer.Ordinal))
        {
            catalog.LoadUnit(dll, [dll], logger);
        }
        foreach (var dir in Directory.EnumerateDirectories(full).Order(StringComparer.Ordinal))
        {
            var main = Path.Combine(dir, Path.GetFileName(dir) + ".dll");
            var files = File.Exists(main)
                ? [main]
                : Directory.EnumerateFiles(dir, "*.dll").Where(f => !PluginLoadContext.IsShared(Path.GetFileNameWithoutExtension(f))).Order(StringComparer.Ordinal).ToArray();
            if (files.Length > 0)
            {
                catalog.LoadUnit(files[0], files, logger);
            }
        }
        return catalog;
    }

    /// <summary>Adds the plugin types of an assembly already loaded (built-in plugins, tests).</summary>
    public PluginCatalog AddAssembly(Assembly assembly)
    {
        RegisterTypes(assembly, assembly.Location, null);
        return this;
    }

    private void LoadUnit(string mainPath, IReadOnlyList<string> files, ILogger? logger)
    {
        if (PluginLoadContext.IsShared(Path.GetFileNameWithoutExtension(mainPath)))
        {
            return;
        }
        var context = new PluginLoadContext(mainPath, _trust);
        foreach (var file in files)
        {
            if (_trust is not null && !_trust.IsTrusted(file, out var hash))
            {
                _errors.Add(new PluginLoadError(file, null, $"refused: its SHA-256 {hash} is not in MoeGrains:TrustedPluginSha256"));
                logger?.LogWarning("Plugin file {File} refused: SHA-256 {Hash} is not trusted", file, hash);
                continue;
            }
            Assembly assembly;
            try
            {
                assembly = context.LoadFromAssemblyPath(file);
            }
            catch (Exception e) when (e is BadImageFormatException or FileLoadException or FileNotFoundException or UntrustedPluginException)
            {
                _errors.Add(new PluginLoadError(file, null, $"not a loadable .NET assembly ({e.GetType().Name}: {e.Message})"));
                logger?.LogWarning("Plugin file {File} is not a loadable assembly: {Message}", file, e.Message);
                continue;
            }
            RegisterTypes(assembly, file, logger);
        }
    }

    private void RegisterTypes(Assembly assembly, string file, ILogger? logger)
    {
        Type[] types;
        try
        {
            types = assembly.GetTypes();
        }
        catch (ReflectionTypeLoadException e)
        {
            types = e.Types.Where(t => t is not null).ToArray()!;
            foreach (var le in e.LoaderExceptions.Where(x => x is not null).Take(3))
            {
                _errors.Add(new PluginLoadError(file, null, $"some types could not be loaded: {le!.Message}"));
            }
        }
        foreach (var type in types)
        {
            var expert = type.GetCustomAttribute<ExpertAttribute>();
            var router = type.GetCustomAttribute<RouterAttribute>();
            if (expert is null && router is null)
            {
                continue;
            }
            var name = expert?.Name ?? router!.Name;
            var error = Check(type, expert is not null, out var kind);
            if (error is not null)
            {
                _errors.Add(new PluginLoadError(file, type.FullName, error));
                logger?.LogWarning("Plugin type {Type} in {File} is not usable: {Error}", type.FullName, file, error);
                continue;
            }
            if (_entries.TryGetValue(name, out var existing))
            {
                _errors.Add(new PluginLoadError(file, type.FullName,
                    $"duplicate plugin name '{name}': already provided by {existing.Type.FullName} in {existing.File}"));
                logger?.LogWarning("Duplicate plugin name {Name} in {File}", name, file);
                continue;
            }
            _entries[name] = new PluginEntry(name, kind, type, file, expert is not null ? expert.Description : router!.Description) { PerSequence = router?.PerSequence ?? false };
        }
    }

    private static string? Check(Type type, bool isExpert, out PluginKind kind)
    {
        kind = PluginKind.Expert;
        if (!type.IsClass || type.IsAbstract || type.IsGenericTypeDefinition)
        {
            return "a plugin must be a concrete, non-generic class";
        }
        if (isExpert)
        {
            if (typeof(IExpert).IsAssignableFrom(type)) kind = PluginKind.Expert;
            else if (typeof(IRetrieverExpert).IsAssignableFrom(type)) kind = PluginKind.RetrieverExpert;
            else if (typeof(IDiffusionExpert).IsAssignableFrom(type)) kind = PluginKind.DiffusionExpert;
            else return "marked [Expert] but implements none of IExpert, IRetrieverExpert, IDiffusionExpert";
        }
        else
        {
            if (typeof(IRouter).IsAssignableFrom(type)) kind = PluginKind.Router;
            else if (typeof(IDiffusionRouter).IsAssignableFrom(type)) kind = PluginKind.DiffusionRouter;
            else return "marked [Router] but implements neither IRouter nor IDiffusionRouter";
        }
        if (type.GetConstructors(BindingFlags.Public | BindingFlags.Instance).Length == 0)
        {
            return "has no public constructor (expected one taking PluginContext and services such as ILogger<T>)";
        }
        return null;
    }

    public bool TryGet(string name, out PluginEntry entry) => _entries.TryGetValue(name, out entry!);

    public PluginEntry Get(string name, PluginKind kind)
    {
        if (!_entries.TryGetValue(name, out var entry))
        {
            var known = string.Join(", ", _entries.Values.Where(e => e.Kind == kind).Select(e => e.Name).Order());
            throw new UnknownExpertException($"No {kind} plugin named '{name}' is loaded (known: {(known.Length == 0 ? "none" : known)}).");
        }
        if (entry.Kind != kind)
        {
            throw new UnknownExpertException($"Plugin '{name}' is a {entry.Kind}, not a {kind}.");
        }
        return entry;
    }

    /// <summary>Creates a plugin instance by constructor injection: the context plus services from <paramref name="services"/>.</summary>
    public T Create<T>(string name, PluginKind kind, PluginContext context, IServiceProvider services) where T : class
    {
        var entry = Get(name, kind);
        try
        {
            return (T)ActivatorUtilities.CreateInstance(services, entry.Type, context);
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            throw new ExpertFailedException($"Plugin '{name}' ({entry.Type.FullName} in {Path.GetFileName(entry.File)}) threw in its constructor for '{context.Id}': {e.InnerException.Message}");
        }
        catch (InvalidOperationException e)
        {
            throw new ExpertFailedException($"Plugin '{name}' ({entry.Type.FullName} in {Path.GetFileName(entry.File)}) has no usable constructor: {e.Message}");
        }
        catch (Exception e) when (e is not MoeGrainsException)
        {
            throw new ExpertFailedException($"Plugin '{name}' ({entry.Type.FullName} in {Path.GetFileName(entry.File)}) failed to start for '{context.Id}': {e.Message}");
        }
    }
}
