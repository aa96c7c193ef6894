using System.Collections.Concurrent;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace MoeGrains.Retrieval.Serving;

/// <summary>
/// Retrieval on a silo (section <c>MoeGrains:Retrieval</c>): which collections can be searched, with which expert
/// plugins, in how many index shards, and the limits on requests.
/// </summary>
public sealed class RetrievalOptions
{
    public const string SectionName = "MoeGrains:Retrieval";

    /// <summary>Collections by name: a folder in SMART or BEIR form. A name not listed is looked up as <c>{DataFolder}/ir/{name}</c>.</summary>
    public Dictionary<string, string> Collections { get; set; } = new(StringComparer.Ordinal);

    /// <summary>The shared data folder (default <c>MOEGRAINS_DATA</c>, else <c>shared/data</c> above the working folder).</summary>
    public string? DataFolder { get; set; }

    /// <summary>The retriever expert plugins a collection is indexed with and routed among, comma-separated.</summary>
    public string Experts { get; set; } = "bm25,minilm,arctic-xs";

    /// <summary>The embedding expert whose query embeddings the router compares with its pilots.</summary>
    public string RouterEncoder { get; set; } = "minilm";

    /// <summary>
    /// The router a search uses when it names none (<see cref="QueryRouter.Names"/>): default <c>weighted-fusion</c>,
    /// the best router of the evaluation (README, Retrieval).
    /// </summary>
    public string Router { get; set; } = QueryRouter.Name(QueryRouter.DEFAULT);

    /// <summary>
    /// Other collections whose judged queries also train each collection's router (comma-separated; each domain's
    /// pilots, as in the evaluation). Empty: a collection's router learns from its own judged queries only.
    /// </summary>
    public string PilotCollections { get; set; } = "";

    /// <summary>
    /// Folder of trained domain adapters (<c>moe eval retrieval --adapters minilm</c> writes them): an expert named
    /// <c>adapter-med</c> in <see cref="Experts"/> is served from <c>{Adapters}/adapter-med.safetensors</c>.
    /// </summary>
    public string? Adapters { get; set; }

    /// <summary>Index shards per (collection, embedding expert), placed round-robin over the silos.</summary>
    public int Shards { get; set; } = 2;

    /// <summary>Words of each text the sentence encoders read (their <c>max_words</c> setting).</summary>
    public int MaxWords { get; set; } = 180;

    /// <summary>ONNX Runtime threads per encoder (0: the plugin's default).</summary>
    public int Threads { get; set; }

    /// <summary>Embedding cache folder for document embeddings (<see cref="EmbeddingCache"/>); empty: no cache.</summary>
    public string? Cache { get; set; }

    /// <summary>Largest k of a search.</summary>
    public int MaxK { get; set; } = 1000;

    /// <summary>Longest query or embedding input, in characters.</summary>
    public int MaxTextChars { get; set; } = 8192;

    /// <summary>Most texts per embeddings request.</summary>
    public int MaxTexts { get; set; } = 256;

    /// <summary>Most judged queries of a collection the router's pilots are built from (the first ones).</summary>
    public int MaxPilotQueries { get; set; } = 1000;

    public IReadOnlyList<string> PilotCollectionList => [.. PilotCollections.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];

    public IReadOnlyList<string> ExpertList => [.. Experts.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];

    /// <summary>The plugin settings of an expert built from these options.</summary>
    public Dictionary<string, string> PluginSettings()
    {
        var settings = new Dictionary<string, string> { ["max_words"] = MaxWords.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (Threads > 0)
        {
            settings["threads"] = Threads.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }
        return settings;
    }

    /// <summary>What the cache key records about settings that change embeddings.</summary>
    public string EmbeddingVariant => $"max_words={MaxWords}";

    /// <summary>The shared data folder: <c>MOEGRAINS_DATA</c>, else <c>shared/data</c> above the working folder or the application.</summary>
    public static string? FindDataFolder()
    {
        if (Environment.GetEnvironmentVariable("MOEGRAINS_DATA") is { Length: > 0 } env)
        {
            return Directory.Exists(env) ? Path.GetFullPath(env) : null;
        }
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "shared", "data");
                if (Directory.Exists(Path.Combine(candidate, "ir")))
                {
                    return candidate;
                }
            }
        }
        return null;
    }
}

/// <summary>The collections this silo can search, loaded once each on first use.</summary>
public sealed class RetrievalCollections(IOptions<RetrievalOptions> options)
{
    private readonly ConcurrentDictionary<string, Lazy<RetrievalCollection>> _loaded = new(StringComparer.Ordinal);

    /// <summary>The collection named <paramref name="name"/>.</summary>
    /// <exception cref="RetrievalRequestException">Field <c>collection</c>: the name is malformed, or no such collection exists.</exception>
    public RetrievalCollection Get(string name)
    {
        if (!RetrievalKeys.IsValidName(name))
        {
            throw new RetrievalRequestException("collection", $"'{name}' is not a collection name (letters, digits, '-', '_', '.'; at most 64 characters).");
        }
        var lazy = _loaded.GetOrAdd(name, n => new Lazy<RetrievalCollection>(() => Load(n)));
        try
        {
            return lazy.Value;
        }
        catch
        {
            _loaded.TryRemove(name, out _); // a fixed folder can be retried
            throw;
        }
    }

    private RetrievalCollection Load(string name)
    {
        var o = options.Value;
        string folder;
        if (o.Collections.TryGetValue(name, out var configured))
        {
            folder = configured;
        }
        else
        {
            var data = o.DataFolder is { Length: > 0 } d ? d : RetrievalOptions.FindDataFolder();
            folder = data is null ? "" : Path.Combine(data, "ir", name);
        }
        if (folder.Length == 0 || !Directory.Exists(folder))
        {
            var known = o.Collections.Keys.Order(StringComparer.Ordinal).ToList();
            throw new RetrievalRequestException("collection",
                $"Unknown collection '{name}'" + (known.Count > 0 ? $" (configured: {string.Join(", ", known)})" : "") + ".");
        }
        try
        {
            return RetrievalCollection.Load(folder, name);
        }
        catch (FormatException e)
        {
            throw new RetrievalRequestException("collection", $"Collection '{name}' cannot be read: {e.Message}");
        }
    }
}

/// <summary>Places index shard <c>s</c> on silo <c>s mod n</c> of the silos sorted by address: a collection's shards spread over the cluster.</summary>
public sealed class IndexShardPlacementStrategy : PlacementStrategy
{
    internal static readonly IndexShardPlacementStrategy Instance = new();
}

/// <summary>Marks a grain class for <see cref="IndexShardPlacementStrategy"/>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class IndexShardPlacementAttribute() : PlacementAttribute(IndexShardPlacementStrategy.Instance);

internal sealed class IndexShardPlacementDirector : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target).OrderBy(s => s.ToString(), StringComparer.Ordinal).ToArray();
        var (_, _, shard, _) = RetrievalKeys.ParseShard(target.GrainIdentity.Key.ToString() ?? "");
        return Task.FromResult(silos[shard % silos.Length]);
    }
}

/// <summary>Silo set-up of the retrieval grains.</summary>
public static class RetrievalSiloBuilderExtensions
{
    /// <summary>Adds retrieval: options from <c>MoeGrains:Retrieval</c> (then <paramref name="configure"/>), the collection catalog and shard placement.</summary>
    public static ISiloBuilder AddMoeGrainsRetrieval(this ISiloBuilder builder, Action<RetrievalOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var options = builder.Services.AddOptions<RetrievalOptions>().Bind(builder.Configuration.GetSection(RetrievalOptions.SectionName));
        if (configure is not null)
        {
            options.Configure(configure);
        }
        builder.Services.TryAddSingleton<RetrievalCollections>();
        if (!builder.Services.Any(s => s.ServiceType == typeof(IndexShardPlacementDirector)))
        {
            builder.Services.AddSingleton<IndexShardPlacementDirector>();
            builder.AddPlacementDirector<IndexShardPlacementStrategy, IndexShardPlacementDirector>();
        }
        return builder;
    }
}
