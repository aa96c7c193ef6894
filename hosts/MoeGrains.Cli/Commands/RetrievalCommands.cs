using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoeGrains.Plugins;
using MoeGrains.Retrieval;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary><c>moe eval retrieval</c>: retrieval experts, fusion, routers and the oracle on test collections.</summary>
internal static class RetrievalCommands
{
    public const string DefaultExperts = "bm25,minilm,arctic-xs";

    public static Command Eval() => new("eval", "Quality measurements that print a table and, with --json, one JSON object") { Retrieval() };

    private static Command Retrieval()
    {
        var collections = new Option<string[]>("--collection")
        {
            Description = "A collection folder (SMART or BEIR), or a name under <data>/ir (med, cran, cisi, cacm); repeatable. Default: the four SMART collections",
            AllowMultipleArgumentsPerToken = true,
        };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var experts = new Option<string>("--experts") { Description = "Retriever expert plugins, comma-separated", DefaultValueFactory = _ => DefaultExperts };
        var router = new Option<string>("--router-encoder") { Description = "The embedding expert whose query embeddings the routers compare with the pilots", DefaultValueFactory = _ => "minilm" };
        var folds = new Option<int>("--folds") { Description = "Cross-validation folds for the routers", DefaultValueFactory = _ => RetrievalBenchmarkOptions.DEFAULT_FOLDS };
        var seed = new Option<int>("--seed") { Description = "Seed of the query shuffle into folds", DefaultValueFactory = _ => RetrievalBenchmarkOptions.DEFAULT_SEED };
        var maxWords = new Option<int>("--max-words") { Description = "Words of each text the sentence encoders read", DefaultValueFactory = _ => 180 };
        var cache = new Option<string?>("--cache") { Description = "Embedding cache folder (default MOEGRAINS_CACHE or ~/.cache/moegrains)" };
        var noCache = new Option<bool>("--no-cache") { Description = "Encode everything again, and store nothing" };
        var adapters = new Option<string?>("--adapters") { Description = "Train one domain expert per collection (a linear query adapter, InfoNCE on titles or first sentences against documents) on this embedding expert, e.g. minilm" };
        var adapterDir = new Option<string?>("--adapter-dir") { Description = "Where the trained adapters are saved (adapter-<collection>.safetensors; default <checkpoints>/retrieval-adapters), or read from with --load-adapters" };
        var loadAdapters = new Option<bool>("--load-adapters") { Description = "Read the adapters from --adapter-dir instead of training them" };
        var command = new Command("retrieval", "nDCG@10 and recall@100 of each retriever expert, uniform fusion, the routers and the oracle, per collection and macro-averaged")
        {
            collections, json, experts, router, folds, seed, maxWords, cache, noCache, adapters, adapterDir, loadAdapters,
        };
        command.SetAction((parse, ct) =>
        {
            var quiet = parse.GetValue(json);
            var Log = CliLog.Progress(quiet);
            List<RetrievalCollection> loaded;
            try
            {
                loaded = [.. Resolve(parse.GetValue(collections) ?? []).Select(path => { Log($"loading {path}"); return RetrievalCollection.Load(path); })];
            }
            catch (Exception e) when (e is DirectoryNotFoundException or FormatException or IOException or ArgumentException)
            {
                Console.Error.WriteLine(e.Message);
                return Task.FromResult(2);
            }
            var names = parse.GetValue(experts)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var words = parse.GetValue(maxWords);
            var catalog = PluginCatalog.Load(CliPaths.Plugins);
            var created = new List<(string, IRetrieverExpert)>();
            try
            {
                foreach (var name in names)
                {
                    var context = new PluginContext
                    {
                        Id = $"retrieval/{name}",
                        Device = CPU,
                        Settings = new Dictionary<string, string> { ["max_words"] = words.ToString(CultureInfo.InvariantCulture) },
                    };
                    created.Add((name, catalog.Create<IRetrieverExpert>(name, PluginKind.RetrieverExpert, context, CliServices.Provider)));
                }
                var options = new RetrievalBenchmarkOptions
                {
                    Folds = parse.GetValue(folds),
                    Seed = parse.GetValue(seed),
                    RouterEncoder = parse.GetValue(router)!,
                    Cache = parse.GetValue(noCache) ? null : new EmbeddingCache(parse.GetValue(cache) is { Length: > 0 } c ? c : EmbeddingCache.DefaultFolder),
                    EmbeddingVariant = $"max_words={words}",
                    AdapterBase = parse.GetValue(adapters) is { Length: > 0 } a ? a : null,
                    AdapterFolder = parse.GetValue(adapterDir) is { Length: > 0 } d ? d : DefaultAdapterFolder,
                    LoadAdapters = parse.GetValue(loadAdapters),
                };
                if (options.LoadAdapters && options.AdapterBase is null)
                {
                    throw new ArgumentException("--load-adapters needs --adapters BASE (the expert they were trained on, e.g. minilm).");
                }
                var sw = Stopwatch.StartNew();
                var report = new RetrievalBenchmark(created, options).Run(loaded, Log);
                if (quiet)
                {
                    Console.WriteLine(JsonSerializer.Serialize(ToJson(report, sw.Elapsed.TotalSeconds), BenchCommands.JsonOptions));
                }
                else
                {
                    Print(report, sw.Elapsed.TotalSeconds);
                }
                return Task.FromResult(0);
            }
            catch (Exception e) when (e is MoeGrains.Contracts.MoeGrainsException or ArgumentException or InvalidOperationException or IOException)
            {
                Console.Error.WriteLine(e.Message);
                return Task.FromResult(2);
            }
            finally
            {
                foreach (var (_, expert) in created)
                {
                    expert.Dispose();
                }
            }
        });
        return command;
    }

    /// <summary>Where <c>moe eval retrieval --adapters</c> saves the trained domain adapters, and <c>moe retrieve</c> finds them.</summary>
    public static string DefaultAdapterFolder => Path.Combine(CliPaths.Checkpoints, "retrieval-adapters");

    /// <summary>
    /// Creates the experts named: plugins, or trained adapters (<c>adapter-*</c>, from <paramref name="adapters"/>) on
    /// their base expert, which shares its cached document embeddings; a base not named is created into <paramref name="extra"/>.
    /// </summary>
    internal static void CreateExperts(PluginCatalog catalog, IReadOnlyList<string> names, IReadOnlyDictionary<string, string> settings, string adapters,
        Dictionary<string, IRetrieverExpert> created, List<IRetrieverExpert> extra)
    {
        IRetrieverExpert Plugin(string name) => catalog.Create<IRetrieverExpert>(name, PluginKind.RetrieverExpert,
            new PluginContext { Id = $"retrieval/{name}", Device = CPU, Settings = settings }, CliServices.Provider);
        foreach (var name in names.Where(n => !IsAdapter(catalog, n)))
        {
            created[name] = Plugin(name);
        }
        foreach (var name in names.Where(n => IsAdapter(catalog, n)))
        {
            var path = LinearAdapterExpert.FileFor(adapters, name);
            var (weight, metadata) = LinearAdapterExpert.ReadFile(path);
            weight.Dispose();
            var baseName = metadata[LinearAdapterExpert.BASE_KEY];
            if (!created.TryGetValue(baseName, out var baseExpert))
            {
                baseExpert = extra.FirstOrDefault(e => e.Descriptor.Name == baseName);
                if (baseExpert is null)
                {
                    baseExpert = Plugin(baseName);
                    extra.Add(baseExpert);
                }
            }
            created[name] = LinearAdapterExpert.Load(path, baseExpert, name);
        }
    }

    private static bool IsAdapter(PluginCatalog catalog, string name) => !catalog.TryGet(name, out _) && name.StartsWith("adapter-", StringComparison.Ordinal);

    /// <summary>Folders as given; a bare name is looked up under the data folder's <c>ir/</c>.</summary>
    internal static IEnumerable<string> Resolve(IReadOnlyList<string> given)
    {
        var data = CliPaths.Data;
        if (given.Count == 0)
        {
            if (data is null)
            {
                throw new DirectoryNotFoundException("No --collection given and no data folder found (set MOEGRAINS_DATA to the folder holding ir/).");
            }
            return new[] { "med", "cran", "cisi", "cacm" }.Select(n => Path.Combine(data, "ir", n));
        }
        return given.Select(g =>
        {
            if (Directory.Exists(g) || g.Contains('/') || g.Contains('\\'))
            {
                return g;
            }
            var candidate = data is null ? null : Path.Combine(data, "ir", g);
            return candidate is not null && Directory.Exists(candidate)
                ? candidate
                : throw new DirectoryNotFoundException($"Unknown collection '{g}': not a folder, and not under {(data is null ? "a data folder (set MOEGRAINS_DATA)" : Path.Combine(data, "ir"))}.");
        });
    }

    private static object ToJson(RetrievalReport report, double seconds) => new
    {
        benchmark = "retrieval",
        split = report.Split,
        metrics = new { ndcg = "nDCG@10, binary relevance", recall = "recall@100" },
        collections = report.Collections.Select(c => new
        {
            name = c.Name,
            documents = c.Documents,
            queries = c.Queries,
            systems = c.Systems.Select(Row),
            router_choices = report.RouterChoices.GetValueOrDefault(c.Name),
        }),
        macro = new { collections = report.Collections.Count, systems = report.Macro.Select(Row) },
        seconds = Math.Round(seconds, 1),
        machine = BenchCommands.Machine(),
    };

    private static object Row(SystemScore s) => new { name = s.Name, ndcg_at_10 = Math.Round(s.NdcgAt10, 4), recall_at_100 = Math.Round(s.RecallAt100, 4) };

    private static void Print(RetrievalReport report, double seconds)
    {
        var table = new Table().Title($"Retrieval: nDCG@10 / recall@100 ({seconds:F0} s)");
        table.AddColumn("system");
        foreach (var c in report.Collections)
        {
            table.AddColumn($"{c.Name} ({c.Queries} q)", col => col.RightAligned());
        }
        table.AddColumn("macro", col => col.RightAligned());
        for (var s = 0; s < report.Macro.Count; s++)
        {
            var cells = new List<string> { report.Macro[s].Name };
            cells.AddRange(report.Collections.Select(c => $"{c.Systems[s].NdcgAt10:F3} / {c.Systems[s].RecallAt100:F3}"));
            cells.Add($"{report.Macro[s].NdcgAt10:F3} / {report.Macro[s].RecallAt100:F3}");
            table.AddRow([.. cells.Select(Markup.Escape)]);
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"[grey]Routers: {Markup.Escape(report.Split)}.[/]");
    }
}
