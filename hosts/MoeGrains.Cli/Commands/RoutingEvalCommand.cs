using MoeGrains.Training;
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Checkpoints;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Plugins;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe eval routing</c>: each routing policy on a trained language model, through the serving path: held-out loss and
/// experts per token in process, greedy generation speed through a local cluster.
/// </summary>
internal static class RoutingEvalCommand
{
    // Every field of every policy is written, null included (SCMoE has no held-out loss; bAbI only with --babi).
    private static readonly JsonSerializerOptions Json = new(BenchCommands.JsonOptions) { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never };

    /// <summary>Adds <c>routing</c> under the <c>eval</c> command (creating it when no other capability has).</summary>
    public static void Register(RootCommand root)
    {
        var eval = root.Subcommands.FirstOrDefault(c => c.Name == "eval");
        if (eval is null)
        {
            eval = new Command("eval", "Quality measurements that print a table and, with --json, one JSON object");
            root.Add(eval);
        }
        eval.Add(Create());
    }

    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "Checkpoint folder or model.safetensors (the reference: usually trained with top-2)", DefaultValueFactory = _ => CliPaths.ReferenceModel };
        var trained = new Option<string?>("--trained") { Description = "Checkpoints trained with other routing policies (comma-separated folders), each evaluated with the router it was trained with" };
        var data = new Option<string?>("--data") { Description = "Text whose last 10% is held out (default: tinyshakespeare, or the bAbI training text with --babi)" };
        var policies = new Option<string>("--policies") { Description = "Router plugins applied at inference to --checkpoint, and scmoe", DefaultValueFactory = _ => "topk,topp,capacity,rank,scmoe" };
        var windows = new Option<int>("--windows") { Description = "Held-out windows evaluated (each the model's context long)", DefaultValueFactory = _ => 24 };
        var babi = new Option<string?>("--babi") { Description = "bAbI tasks whose test questions are answered (e.g. qa1,qa6,qa15); the checkpoints must be trained on them (moe train --babi)" };
        var answerOnly = new Option<bool>("--answer-only") { Description = "With --babi: the held-out loss (and the easy/hard split) over the answer tokens only, as models trained with --answer-only learn them" };
        var babiStories = new Option<int>("--babi-stories") { Description = "Test stories per bAbI task (0: all)", DefaultValueFactory = _ => 0 };
        var silos = new Option<int>("--silos") { Description = "Silos of the cluster generation speed is measured through (0: in process)", DefaultValueFactory = _ => 2 };
        var tokens = new Option<int>("--tokens") { Description = "Greedy tokens generated per policy for the speed", DefaultValueFactory = _ => 64 };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 1 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var command = new Command("routing", "Routing policies on trained language models: held-out loss, bAbI accuracy, experts per token (easy/hard), FLOPs against top-2, tokens/s")
        {
            checkpoint, trained, data, policies, windows, babi, babiStories, silos, tokens, threads, json, answerOnly,
        };
        command.SetAction(async (parse, ct) =>
        {
            try
            {
                static string[] List(string? s) => s?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) ?? [];
                return await Run(parse.GetValue(checkpoint)!, List(parse.GetValue(trained)), parse.GetValue(data), List(parse.GetValue(policies)), parse.GetValue(windows),
                    List(parse.GetValue(babi)), parse.GetValue(babiStories), parse.GetValue(silos), parse.GetValue(tokens), parse.GetValue(threads), parse.GetValue(json),
                    parse.GetValue(answerOnly), ct);
            }
            catch (Exception e) when (e is Contracts.CheckpointException or ArgumentException or InvalidDataException or FileNotFoundException or Contracts.UnknownExpertException or GenerationRequestException)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
        });
        return command;
    }

    private sealed record Model(string Key, string Path, SafeTensorsFile File, ITextTokenizer Tokenizer, string Router, int Context, int Layers);

    private static Model Open(string key, string checkpoint)
    {
        var path = Path.GetFullPath(LanguageModelCheckpoint.WeightsPath(checkpoint));
        var file = SafeTensorsFile.Open(path);
        var router = file.Metadata.TryGetValue(Models.ModelSpec.RouterPluginKey, out var r) ? r : "topk";
        var context = int.Parse(file.Metadata["max_position_embeddings"], CultureInfo.InvariantCulture);
        var layers = int.Parse(file.Metadata["num_hidden_layers"], CultureInfo.InvariantCulture);
        return new Model(key, path, file, TextTokenizers.FromMetadata(file.Metadata), router, context, layers);
    }

    private static async Task<int> Run(string checkpoint, string[] trained, string? dataPath, string[] policies, int windowCount, string[] babiTasks, int babiStories,
        int silos, int tokens, int threads, bool asJson, bool answerOnly, CancellationToken ct)
    {
        if (policies.Length == 0 && trained.Length == 0 || windowCount < 1 || silos < 0 || tokens < 1 || babiStories < 0)
        {
            throw new ArgumentException("Give at least one policy or trained checkpoint, positive --windows and --tokens, and --babi-stories of at least 0.");
        }
        var main = Open("lm", checkpoint);
        var others = trained.Select((t, i) => Open($"lm{i + 1}", t)).ToList();
        var babiFolder = babiTasks.Length > 0 ? (CliPaths.Data is { } bd ? Path.Combine(bd, "qa", "babi") : throw new ArgumentException("No bAbI data: set MOEGRAINS_DATA.")) : null;
        string heldOutText;
        if (dataPath is null && babiFolder is not null)
        {
            heldOutText = BabiTasks.TrainingText(babiFolder, babiTasks);
            dataPath = $"{babiFolder} ({string.Join(",", babiTasks)} training stories)";
        }
        else
        {
            dataPath ??= CliPaths.Data is { } d ? Path.Combine(d, "text", "tinyshakespeare.txt") : throw new ArgumentException("No text: pass --data or set MOEGRAINS_DATA.");
            heldOutText = File.ReadAllText(dataPath);
        }
        if (answerOnly && babiFolder is null)
        {
            throw new ArgumentException("--answer-only needs --babi: only bAbI text has answers.");
        }
        (int[][] Windows, bool[][]? Targets) HeldOut(Model m)
        {
            if (!answerOnly)
            {
                return (RoutingEvaluation.Windows(new TokenCorpus(m.Tokenizer.Encode(heldOutText)).HeldOut, m.Context, windowCount), null);
            }
            // The training text as moe train --answer-only encodes it; only the answer tokens are targets.
            var (ids, mask) = BabiTasks.Tokens(BabiTasks.TrainingStories(babiFolder!, babiTasks), m.Tokenizer.Encode);
            var corpus = new TokenCorpus(ids, 0.1, mask);
            var offsets = TokenCorpus.EvaluationOffsets(corpus.HeldOut.Length, m.Context, windowCount);
            int Length(int o) => Math.Min(m.Context, corpus.HeldOut.Length - o);
            return ([.. offsets.Select(o => corpus.HeldOut.AsSpan(o, Length(o)).ToArray())], [.. offsets.Select(o => corpus.HeldOutMask!.AsSpan(o, Length(o)).ToArray())]);
        }
        var (windows, mainTargets) = HeldOut(main);
        var babiStoriesByTask = babiFolder is null ? [] : babiTasks.Select(t =>
        {
            var all = BabiTasks.Load(BabiTasks.File(babiFolder, t, "test"), t);
            return babiStories > 0 ? all.Take(babiStories).ToList() : all;
        }).SelectMany(x => x).ToList();
        set_num_threads(Math.Max(1, threads));
        var catalog = PluginCatalog.Load(CliPaths.Plugins);
        var prompt = windows[0].Take(Math.Min(16, main.Context / 2)).ToArray();

        await using var cluster = silos > 0
            ? await LocalCluster.StartAsync(silos, (_, silo) => silo.AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.PluginFolder = CliPaths.Plugins;
                foreach (var m in others.Prepend(main)) o.Models[m.Key] = m.Path;
            }), cancellationToken: ct)
            : null;
        var opened = new List<IAsyncDisposable>();
        DecoderStepAsync Session(Model m, string? router)
        {
            if (cluster is null)
            {
                var s = DecoderSession.InProcess(catalog, m.Path, CliServices.Provider, m.Key, router);
                opened.Add(new Disposer(() => { s.Dispose(); return ValueTask.CompletedTask; }));
                return s.AppendAsync;
            }
            var grain = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key(m.Key, Guid.NewGuid().ToString("N")));
            opened.Add(new Disposer(async () => await grain.Close()));
            var append = RemoteSession.Appender(grain, router);
            return async (t, token) => (await append(t, token)).Logits;
        }

        // Warm up first (grain activations, expert weights loaded), so that the first policy's speed is not the cold start.
        await RoutingEvaluation.SpeedAsync(Session(main, null), prompt, 4, main.Context, ct);
        var mainEval = new RoutingEvaluation(catalog, main.Path, CliServices.Provider);
        var results = new List<RoutingPolicyResult>();
        Dictionary<string, HeldOutDetail> details = [];
        var items = new Dictionary<string, List<BabiItem>>();
        List<BabiItem> Items(Model m) => items.TryGetValue(m.Tokenizer.Name + m.Tokenizer.VocabSize + m.Context, out var list)
            ? list
            : items[m.Tokenizer.Name + m.Tokenizer.VocabSize + m.Context] = [.. babiStoriesByTask.Select(s => BabiItem.From(s, m.Tokenizer.Encode))];
        async Task<HeldOutDetail> Detail(RoutingEvaluation evaluation, Model m, string? router, string key)
        {
            if (!details.TryGetValue(key, out var d))
            {
                var (w, t) = m == main ? (windows, mainTargets) : HeldOut(m);
                details[key] = d = await evaluation.HeldOutDetailAsync(router, w, ct, t);
            }
            return d;
        }
        // Easy and hard tokens: by the reference checkpoint's per-token loss with its own router (lowest and highest quarter).
        var reference = await Detail(mainEval, main, null, main.Router);
        var (easy, hard) = RoutingEvaluation.Difficulty(reference.TokenLoss);
        bool SameTokens(Model m) => m.Tokenizer.VocabSize == main.Tokenizer.VocabSize && m.Tokenizer.Name == main.Tokenizer.Name && m.Context == main.Context;

        RoutingPolicyResult Result(string name, Model m, bool isTrained, HeldOutDetail d, double speed, IReadOnlyDictionary<string, double>? babiAccuracy)
        {
            var split = SameTokens(m);
            return new RoutingPolicyResult(name, d.Loss, d.ExpertsPerTokenByLayer.Average(), d.ExpertsPerTokenByLayer, d.ExpertsPerTokenByLayer.Average() / 2, speed)
            {
                Checkpoint = m.Path, Trained = isTrained, BabiAccuracy = babiAccuracy,
                ExpertsPerTokenEasy = split ? RoutingEvaluation.MeanWhere(d.TokenExperts, easy, m.Layers) : null,
                ExpertsPerTokenHard = split ? RoutingEvaluation.MeanWhere(d.TokenExperts, hard, m.Layers) : null,
                ExpertsPerTokenDistribution = d.TokenExperts.Length == 0 ? null : d.TokenExperts
                    .GroupBy(e => (int)Math.Round((double)e / m.Layers)).OrderBy(g => g.Key)
                    .ToDictionary(g => g.Key.ToString(CultureInfo.InvariantCulture), g => Math.Round((double)g.Count() / d.TokenExperts.Length, 4)),
            };
        }

        try
        {
            foreach (var policy in policies)
            {
                if (!asJson) AnsiConsole.MarkupLine($"[grey]{Markup.Escape(policy)}...[/]");
                if (policy.Equals(RoutingEvaluation.SelfContrast, StringComparison.OrdinalIgnoreCase))
                {
                    var contrast = new SelfContrastDecoding();
                    var strong = (await Detail(mainEval, main, null, main.Router)).ExpertsPerTokenByLayer;
                    var weak = (await Detail(mainEval, main, contrast.WeakRouter, contrast.WeakRouter)).ExpertsPerTokenByLayer;
                    var both = strong.Zip(weak, (a, b) => a + b).ToArray();
                    // Through the cluster the session grain runs both passes and streams the contrasted tokens.
                    var speed = cluster is null
                        ? await RoutingEvaluation.SpeedAsync(contrast.Step(Session(main, null), Session(main, contrast.WeakRouter)), prompt, tokens, main.Context, ct)
                        : await RoutingEvaluation.StreamSpeedAsync(GenerationStreams.GenerateAsync(cluster.Silos[0].Services.GetRequiredService<IClusterClient>(), main.Key, prompt,
                            new GenerationOptions { MaxTokens = tokens, Temperature = 0, SelfContrast = contrast }, null, ct), ct);
                    var acc = babiFolder is null ? null : await mainEval.BabiAsync(null, Items(main), main.Context, contrast, ct);
                    results.Add(new RoutingPolicyResult("scmoe", null, both.Average(), both, both.Average() / 2, speed) { Checkpoint = main.Path, BabiAccuracy = acc });
                }
                else
                {
                    var router = policy.Equals(main.Router, StringComparison.OrdinalIgnoreCase) ? null : policy;
                    var d = await Detail(mainEval, main, router, policy);
                    var speed = await RoutingEvaluation.SpeedAsync(Session(main, router), prompt, tokens, main.Context, ct);
                    var acc = babiFolder is null ? null : await mainEval.BabiAsync(router, Items(main), main.Context, null, ct);
                    results.Add(Result(router is null ? $"{policy} (trained)" : policy, main, router is null, d, speed, acc));
                }
            }
            foreach (var m in others)
            {
                if (!asJson) AnsiConsole.MarkupLine($"[grey]{Markup.Escape(m.Router)} (trained, {Markup.Escape(m.Path)})...[/]");
                var evaluation = new RoutingEvaluation(catalog, m.Path, CliServices.Provider);
                var d = await Detail(evaluation, m, null, m.Key);
                var speed = await RoutingEvaluation.SpeedAsync(Session(m, null), prompt, tokens, m.Context, ct);
                var acc = babiFolder is null ? null : await evaluation.BabiAsync(null, Items(m), m.Context, null, ct);
                results.Add(Result($"{m.Router} (trained)", m, true, d, speed, acc));
            }
        }
        finally
        {
            foreach (var o in opened) await o.DisposeAsync();
        }

        var heldOutTokens = mainTargets is null ? windows.Sum(w => w.Length - 1) : mainTargets.Sum(t => t.Skip(1).Count(x => x));
        if (asJson)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                checkpoint = main.Path, data = dataPath, answer_only = answerOnly, heldout_windows = windows.Length, heldout_tokens = heldOutTokens, silos, generated_tokens = tokens,
                babi_tasks = babiTasks, babi_questions = babiStoriesByTask.GroupBy(s => s.Task).ToDictionary(g => g.Key, g => g.Sum(s => s.Questions.Length)),
                easy_hard = "easy: held-out positions whose next-token loss under the reference checkpoint (its own router) is in the lowest quarter; hard: in the highest quarter",
                policies = results.Select(p => new
                {
                    name = p.Name, trained = p.Trained, checkpoint = p.Checkpoint, heldout_loss = p.HeldOutLoss, babi_accuracy = p.BabiAccuracy,
                    experts_per_token = p.ExpertsPerToken, experts_per_token_by_layer = p.ExpertsPerTokenByLayer, experts_per_token_easy = p.ExpertsPerTokenEasy,
                    experts_per_token_hard = p.ExpertsPerTokenHard, experts_per_token_distribution = p.ExpertsPerTokenDistribution, flops_vs_top2 = p.FlopsVsTop2,
                    tokens_per_s = p.TokensPerSecond,
                }),
            }, Json));
            return 0;
        }
        static string F(double? v, string format) => v is { } x ? x.ToString(format, CultureInfo.InvariantCulture) : "-";
        var table = new Table().Title($"routing policies: {heldOutTokens:N0} held-out tokens ({windows.Length} windows), speed over {tokens} greedy tokens {(silos > 0 ? $"through {silos} silos" : "in process")}")
            .AddColumns("policy", "held-out loss", "bAbI accuracy", "experts/token", "by layer", "easy / hard", "expert FLOPs vs top-2", "tokens/s");
        foreach (var p in results)
        {
            table.AddRow(Markup.Escape(p.Name), F(p.HeldOutLoss, "F4"),
                p.BabiAccuracy is { } b ? string.Join(" ", b.Select(kv => $"{kv.Key} {kv.Value.ToString("F3", CultureInfo.InvariantCulture)}")) : "-",
                p.ExpertsPerToken.ToString("F3", CultureInfo.InvariantCulture),
                string.Join(" ", p.ExpertsPerTokenByLayer.Select(e => e.ToString("F2", CultureInfo.InvariantCulture))),
                $"{F(p.ExpertsPerTokenEasy, "F2")} / {F(p.ExpertsPerTokenHard, "F2")}", p.FlopsVsTop2.ToString("F2", CultureInfo.InvariantCulture),
                p.TokensPerSecond.ToString("F1", CultureInfo.InvariantCulture));
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine("[grey]easy / hard: experts per token and layer on the held-out positions the reference checkpoint finds easiest / hardest (lowest / highest quarter of its next-token loss).[/]");
        return 0;
    }

    private sealed class Disposer(Func<ValueTask> dispose) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => dispose();
    }
}
