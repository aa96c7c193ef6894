using System.Collections.Concurrent;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace MoeGrains.Diffusion;

/// <summary>The diffusion models a silo serves: <c>MoeGrains:Diffusion:Models:NAME = FOLDER</c>.</summary>
public sealed class DiffusionOptions
{
    public const string SectionName = "MoeGrains:Diffusion";

    public Dictionary<string, string> Models { get; set; } = new(StringComparer.Ordinal);
}

/// <summary>The served diffusion model folders, opened on first use; unknown names are refused with <see cref="UnknownExpertException"/>.</summary>
public sealed class DiffusionCatalog(IOptions<DiffusionOptions> options)
{
    private readonly ConcurrentDictionary<string, DiffusionModelFolder> _open = new(StringComparer.Ordinal);

    public IReadOnlyCollection<string> Names => options.Value.Models.Keys;

    public DiffusionModelFolder Get(string model)
    {
        if (!options.Value.Models.TryGetValue(model, out var path))
        {
            throw new UnknownExpertException($"Unknown diffusion model '{model}' (served: {(Names.Count == 0 ? "none" : string.Join(", ", Names.Order()))}).");
        }
        return _open.GetOrAdd(model, _ => DiffusionModelFolder.Open(path));
    }

    /// <summary>Parses <c>model/expert</c> and checks that the model and expert exist.</summary>
    public (DiffusionModelFolder Folder, string Model, int Expert) Check(string key)
    {
        var slash = key.LastIndexOf('/');
        if (slash <= 0 || !int.TryParse(key.AsSpan(slash + 1), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var expert))
        {
            throw new UnknownExpertException($"'{key}' is not a diffusion expert key (model/expert).");
        }
        var model = key[..slash];
        var folder = Get(model);
        if (expert < 0 || expert >= folder.Manifest.Experts)
        {
            throw new UnknownExpertException($"Diffusion model '{model}' has experts 0..{folder.Manifest.Experts - 1}; there is no expert {expert}.");
        }
        return (folder, model, expert);
    }
}

/// <summary>Places diffusion expert <c>k</c> on silo <c>k mod n</c> (silos sorted by address), refusing unknown keys before activation.</summary>
public sealed class DiffusionPlacementStrategy : PlacementStrategy
{
    internal static readonly DiffusionPlacementStrategy Instance = new();
}

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class DiffusionPlacementAttribute() : PlacementAttribute(DiffusionPlacementStrategy.Instance);

internal sealed class DiffusionPlacementDirector(DiffusionCatalog catalog) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target).OrderBy(s => s.ToString(), StringComparer.Ordinal).ToArray();
        var (_, _, expert) = catalog.Check(target.GrainIdentity.Key.ToString() ?? "");
        return Task.FromResult(silos[expert % silos.Length]);
    }
}

/// <summary>Silo set-up for decentralized diffusion: <c>silo.AddMoeGrains(...).AddDiffusion(o =&gt; o.Models["digits"] = folder)</c>.</summary>
public static class DiffusionSiloBuilderExtensions
{
    /// <summary>Adds the diffusion grains' catalog and placement; models come from <c>MoeGrains:Diffusion</c>, then <paramref name="configure"/>.</summary>
    public static ISiloBuilder AddDiffusion(this ISiloBuilder builder, Action<DiffusionOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var options = builder.Services.AddOptions<DiffusionOptions>().Bind(builder.Configuration.GetSection(DiffusionOptions.SectionName));
        if (configure is not null) options.Configure(configure);
        builder.Services.TryAddSingleton<DiffusionCatalog>();
        builder.AddPlacementDirector<DiffusionPlacementStrategy, DiffusionPlacementDirector>();
        return builder;
    }
}
