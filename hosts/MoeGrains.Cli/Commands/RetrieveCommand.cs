using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using MoeGrains.Plugins;
using MoeGrains.Retrieval;
using MoeGrains.Retrieval.Serving;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary><c>moe retrieve "query" --collection DIR</c>: routes a query to a retriever expert and prints the top documents.</summary>
internal static class RetrieveCommand
{
    public const int MAX_K = 1000;

    public static Command Create()
    {
        var query = new Argument<string>("query") { Description = "The query text" };
        var collection = new Option<string>("--collection") { Description = "A collection folder (SMART or BEIR), or a name under <data>/ir (med, cran, cisi, cacm)", Required = true };
        var k = new Option<int>("--k") { Description = $"Documents to print (1-{MAX_K})", DefaultValueFactory = _ => 10 };
        var expert = new Option<string?>("--expert") { Description = "Search with this expert instead of the router's choice" };
        var experts = new Option<string>("--experts") { Description = "The retriever expert plugins to route among, comma-separated", DefaultValueFactory = _ => RetrievalCommands.DefaultExperts };
        var router = new Option<string>("--router-encoder") { Description = "The embedding expert the router compares queries with its pilots by", DefaultValueFactory = _ => "minilm" };
        var maxWords = new Option<int>("--max-words") { Description = "Words of each text the sentence encoders read (64 matches the README's evaluation, and its embedding cache)", DefaultValueFactory = _ => 64 };
        var cache = new Option<string?>("--cache") { Description = "Embedding cache folder (default MOEGRAINS_CACHE or ~/.cache/moegrains)" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object" };
        var routerName = new Option<string>("--router") { Description = $"The router: {string.Join(", ", QueryRouter.Names)}", DefaultValueFactory = _ => QueryRouter.Name(QueryRouter.DEFAULT) };
        var pilots = new Option<string?>("--pilot-collections") { Description = "Other collections (folders or names under <data>/ir) whose judged queries also train the router, comma-separated" };
        var adapterDir = new Option<string?>("--adapter-dir") { Description = "Folder of trained adapters (adapter-<collection>.safetensors), for experts named adapter-* (default <checkpoints>/retrieval-adapters)" };
        var command = new Command("retrieve", "Route a query to the best retriever expert, or mix them (routers trained on the collection's judged queries), and print the top documents")
        {
            query, collection, k, expert, experts, router, maxWords, cache, json, routerName, pilots, adapterDir,
        };
        command.SetAction((parse, ct) =>
        {
            var quiet = parse.GetValue(json);
            var Log = CliLog.Progress(quiet);
            var names = parse.GetValue(experts)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var created = new Dictionary<string, IRetrieverExpert>(StringComparer.Ordinal);
            var extra = new List<IRetrieverExpert>();
            try
            {
                var kind = RetrievalFlow.ParseRouter(parse.GetValue(routerName), "router");
                var request = new RetrievalRequest(parse.GetValue(query) ?? "", parse.GetValue(k), parse.GetValue(expert));
                var routerEncoder = parse.GetValue(router)!;
                RetrievalFlow.Validate(request, names, MAX_K, 8192);
                if (!names.Contains(routerEncoder, StringComparer.Ordinal))
                {
                    throw new RetrievalRequestException("router-encoder", $"The router encoder '{routerEncoder}' must be one of --experts ({string.Join(", ", names)}).");
                }
                var folder = RetrievalCommands.Resolve([parse.GetValue(collection)!]).Single();
                var loaded = RetrievalCollection.Load(folder);
                var words = parse.GetValue(maxWords);
                var settings = new Dictionary<string, string> { ["max_words"] = words.ToString(CultureInfo.InvariantCulture) };
                var catalog = PluginCatalog.Load(CliPaths.Plugins);
                var adapters = parse.GetValue(adapterDir) is { Length: > 0 } dir ? dir : RetrievalCommands.DefaultAdapterFolder;
                RetrievalCommands.CreateExperts(catalog, names, settings, adapters, created, extra);
                var cacheFolder = new EmbeddingCache(parse.GetValue(cache) is { Length: > 0 } c ? c : EmbeddingCache.DefaultFolder);
                var variant = $"max_words={words}";
                var otherFolders = (parse.GetValue(pilots) ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                var others = RetrievalCommands.Resolve(otherFolders).Select(f => RetrievalCollection.Load(f)).Where(o => o.Name != loaded.Name).ToList();
                using var backend = new InProcessRetrieval(loaded, created, cacheFolder, variant, Log);
                Func<Task<IReadOnlyList<PilotQuery>>>? otherDomains = others.Count == 0 ? null : async () =>
                {
                    var all = new List<PilotQuery>();
                    foreach (var other in others)
                    {
                        Log($"{other.Name}: pilot queries from its {other.JudgedQueries.Count} judged queries");
                        using var otherBackend = new InProcessRetrieval(other, created, cacheFolder, variant, Log);
                        all.AddRange(await new RetrievalFlow(other, names, routerEncoder, otherBackend).OwnPilotQueries());
                    }
                    return all;
                };
                var flow = new RetrievalFlow(loaded, names, routerEncoder, backend, router: kind, otherDomains: otherDomains);
                if (request.Expert is null)
                {
                    Log($"{loaded.Name}: router {QueryRouter.Name(kind)}, pilots from {Math.Min(loaded.JudgedQueries.Count, 1000)} judged queries" + (others.Count > 0 ? $" and those of {string.Join(", ", others.Select(o => o.Name))}" : ""));
                }
                var result = flow.Search(request).GetAwaiter().GetResult();
                if (quiet)
                {
                    Console.WriteLine(JsonSerializer.Serialize(ToJson(result, flow.PilotQueries), BenchCommands.JsonOptions));
                }
                else
                {
                    Print(result, flow.PilotQueries);
                }
                return Task.FromResult(0);
            }
            catch (Exception e) when (e is MoeGrains.Contracts.MoeGrainsException or DirectoryNotFoundException or FormatException or IOException or ArgumentException)
            {
                Console.Error.WriteLine(e is RetrievalRequestException r ? $"error ({r.Field}): {r.Message}" : $"error: {e.Message}");
                return Task.FromResult(2);
            }
            finally
            {
                foreach (var e in created.Values.Concat(extra))
                {
                    e.Dispose();
                }
            }
        });
        return command;
    }

    /// <summary>The first <paramref name="words"/> words of a text, on one line.</summary>
    internal static string FirstWords(string text, int words)
    {
        var parts = text.Split((char[]?)null, words + 1, StringSplitOptions.RemoveEmptyEntries);
        return parts.Length <= words ? string.Join(' ', parts) : string.Join(' ', parts.Take(words)) + " ...";
    }

    private static object ToJson(RetrievalResult result, int pilotQueries) => new
    {
        collection = result.Collection,
        expert = result.Expert,
        routed = result.Routed,
        router = result.Routed ? new
        {
            name = result.Router,
            pilot_queries = pilotQueries,
            similarity = result.Experts.Zip(result.RouterScores).ToDictionary(p => p.First, p => float.IsFinite(p.Second) ? Math.Round(p.Second, 4) : (double?)null),
            weights = result.Weights is { } w ? result.Experts.Zip(w).ToDictionary(p => p.First, p => Math.Round(p.Second, 4)) : null,
        } : null,
        hits = result.Hits.Select((h, i) => new { rank = i + 1, id = h.Id, score = Math.Round(h.Score, 4), title = h.Title, first_words = FirstWords(h.Text, 20) }),
    };

    private static void Print(RetrievalResult result, int pilotQueries)
    {
        if (result.Routed)
        {
            var scores = string.Join(", ", result.Experts.Zip(result.RouterScores).Select(p => float.IsFinite(p.Second) ? $"{p.First} {p.Second:F3}" : $"{p.First} (no pilot)"));
            var weights = result.Weights is { } w && result.Expert == result.Router
                ? "; weights " + string.Join(", ", result.Experts.Zip(w).Select(p => $"{p.First} {p.Second:F3}"))
                : "";
            var what = result.Expert == result.Router ? "mixed by" : $"routed to [bold]{Markup.Escape(result.Expert)}[/] by";
            AnsiConsole.MarkupLine($"{what} router [bold]{Markup.Escape(result.Router)}[/] (pilot similarity: {Markup.Escape(scores)}{Markup.Escape(weights)}; pilots from {pilotQueries} judged queries)");
        }
        else
        {
            AnsiConsole.MarkupLine($"expert [bold]{Markup.Escape(result.Expert)}[/] (given)");
        }
        var table = new Table().Title($"{Markup.Escape(result.Collection)}: top {result.Hits.Length}");
        table.AddColumn("#", c => c.RightAligned());
        table.AddColumn("id");
        table.AddColumn("score", c => c.RightAligned());
        table.AddColumn("first words");
        for (var i = 0; i < result.Hits.Length; i++)
        {
            var h = result.Hits[i];
            var text = h.Title.Length > 0 ? $"{h.Title} | {h.Text}" : h.Text;
            table.AddRow((i + 1).ToString(CultureInfo.InvariantCulture), Markup.Escape(h.Id), h.Score.ToString("F3", CultureInfo.InvariantCulture), Markup.Escape(FirstWords(text, 14)));
        }
        AnsiConsole.Write(table);
    }
}
