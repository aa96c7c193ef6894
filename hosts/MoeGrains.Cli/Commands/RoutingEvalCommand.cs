using System.CommandLine;
using System.Globalization;
using System.Text.Json;
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
    // Every field of every policy is written, null included (SCMoE has no held-out loss, nothing has bAbI yet).
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
        var checkpoint = new Option<string>("--checkpoint") { Description = "Checkpoint folder or model.safetensors", DefaultValueFactory = _ => Path.Combine(CliPaths.Checkpoints, "shakespeare") };
        var data = new Option<string?>("--data") { Description = "Text whose last 10% is held out (default: tinyshakespeare)" };
        var policies = new Option<string>("--policies") { Description = "Router plugins to compare, and scmoe", DefaultValueFactory = _ => "topk,topp,capacity,rank,scmoe" };
        var windows = new Option<int>("--windows") { Description = "Held-out windows evaluated (each the model's context long)", DefaultValueFactory = _ => 24 };
        var silos = new Option<int>("--silos") { Description = "Silos of the cluster generation speed is measured through (0: in process)", DefaultValueFactory = _ => 2 };
        var tokens = new Option<int>("--tokens") { Description = "Greedy tokens generated per policy for the speed", DefaultValueFactory = _ => 64 };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 1 };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var command = new Command("routing", "Routing policies on a trained language model: held-out loss, experts per token, FLOPs against top-2, tokens/s")
        {
            checkpoint, data, policies, windows, silos, tokens, threads, json,
        };
        command.SetAction(async (parse, ct) =>
        {
            try
            {
                return await Run(parse.GetValue(checkpoint)!, parse.GetValue(data), parse.GetValue(policies)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                    parse.GetValue(windows), parse.GetValue(silos), parse.GetValue(tokens), parse.GetValue(threads), parse.GetValue(json), ct);
            }
            catch (Exception e) when (e is Contracts.CheckpointException or ArgumentException or InvalidDataException or Contracts.UnknownExpertException or GenerationRequestException)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
        });
        return command;
    }

    private static async Task<int> Run(string checkpoint, string? dataPath, string[] policies, int windowCount, int silos, int tokens, int threads, bool asJson, CancellationToken ct)
    {
        if (policies.Length == 0 || windowCount < 1 || silos < 0 || tokens < 1)
        {
            throw new ArgumentException("Give at least one policy, and positive --windows and --tokens.");
        }
        var path = Path.GetFullPath(LanguageModelCheckpoint.WeightsPath(checkpoint));
        var file = SafeTensorsFile.Open(path);
        var tokenizer = TextTokenizers.FromMetadata(file.Metadata);
        var context = int.Parse(file.Metadata["max_position_embeddings"], CultureInfo.InvariantCulture);
        dataPath ??= CliPaths.Data is { } d ? Path.Combine(d, "text", "tinyshakespeare.txt") : throw new ArgumentException("No text: pass --data or set MOEGRAINS_DATA.");
        var heldOut = new TokenCorpus(tokenizer.Encode(File.ReadAllText(dataPath))).HeldOut;
        var windows = RoutingEvaluation.Windows(heldOut, context, windowCount);
        set_num_threads(Math.Max(1, threads));
        var catalog = PluginCatalog.Load(CliPaths.Plugins);
        var evaluation = new RoutingEvaluation(catalog, path, CliServices.Provider);
        var own = file.Metadata.TryGetValue(Models.ModelSpec.RouterPluginKey, out var r) ? r : "topk";
        var prompt = windows[0].Take(Math.Min(16, context / 2)).ToArray();

        await using var cluster = silos > 0
            ? await LocalCluster.StartAsync(silos, (_, silo) => silo.AddMoeGrains(o => { o.Device = "cpu"; o.PluginFolder = CliPaths.Plugins; o.Models["lm"] = path; }), cancellationToken: ct)
            : null;
        var opened = new List<IAsyncDisposable>();
        DecoderStepAsync Session(string? router)
        {
            if (cluster is null)
            {
                var s = DecoderSession.InProcess(catalog, path, CliServices.Provider, "lm", router);
                opened.Add(new Disposer(() => { s.Dispose(); return ValueTask.CompletedTask; }));
                return s.AppendAsync;
            }
            var grain = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
            opened.Add(new Disposer(async () => await grain.Close()));
            return async (t, token) => (await grain.Append(t, router, token)).Logits;
        }

        // Warm up first (grain activations, expert weights loaded), so that the first policy's speed is not the cold start.
        await RoutingEvaluation.SpeedAsync(Session(null), prompt, 4, context, ct);
        var results = new List<RoutingPolicyResult>();
        Dictionary<string, double[]> perLayer = [];
        try
        {
            foreach (var policy in policies)
            {
                if (!asJson) AnsiConsole.MarkupLine($"[grey]{Markup.Escape(policy)}...[/]");
                RoutingPolicyResult result;
                if (policy.Equals(RoutingEvaluation.SelfContrast, StringComparison.OrdinalIgnoreCase))
                {
                    var contrast = new SelfContrastDecoding();
                    var strong = perLayer.TryGetValue(own, out var s) ? s : (await evaluation.HeldOutAsync(null, windows, ct)).ExpertsPerTokenByLayer;
                    var weak = perLayer.TryGetValue(contrast.WeakRouter, out var w) ? w : (await evaluation.HeldOutAsync(contrast.WeakRouter, windows, ct)).ExpertsPerTokenByLayer;
                    var both = strong.Zip(weak, (a, b) => a + b).ToArray();
                    var speed = await RoutingEvaluation.SpeedAsync(contrast.Step(Session(null), Session(contrast.WeakRouter)), prompt, tokens, context, ct);
                    result = new RoutingPolicyResult("scmoe", null, both.Average(), both, both.Average() / 2, speed);
                }
                else
                {
                    var router = policy.Equals(own, StringComparison.OrdinalIgnoreCase) ? null : policy;
                    var (loss, layers) = await evaluation.HeldOutAsync(router, windows, ct);
                    perLayer[policy] = layers;
                    var speed = await RoutingEvaluation.SpeedAsync(Session(router), prompt, tokens, context, ct);
                    result = new RoutingPolicyResult(policy, loss, layers.Average(), layers, layers.Average() / 2, speed);
                }
                results.Add(result);
            }
        }
        finally
        {
            foreach (var o in opened) await o.DisposeAsync();
        }

        var heldOutTokens = windows.Sum(w => w.Length - 1);
        if (asJson)
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                checkpoint = path, data = dataPath, heldout_windows = windows.Length, heldout_tokens = heldOutTokens, silos, generated_tokens = tokens,
                policies = results.Select(p => new
                {
                    name = p.Name, heldout_loss = p.HeldOutLoss, babi_accuracy = p.BabiAccuracy, experts_per_token = p.ExpertsPerToken,
                    experts_per_token_by_layer = p.ExpertsPerTokenByLayer, flops_vs_top2 = p.FlopsVsTop2, tokens_per_s = p.TokensPerSecond,
                }),
            }, Json));
            return 0;
        }
        var table = new Table().Title($"routing policies: {heldOutTokens:N0} held-out tokens ({windows.Length} windows), speed over {tokens} greedy tokens {(silos > 0 ? $"through {silos} silos" : "in process")}")
            .AddColumns("policy", "held-out loss", "experts/token", "by layer", "expert FLOPs vs top-2", "tokens/s");
        foreach (var p in results)
        {
            table.AddRow(p.Name, p.HeldOutLoss is { } l ? l.ToString("F4", CultureInfo.InvariantCulture) : "-", p.ExpertsPerToken.ToString("F3", CultureInfo.InvariantCulture),
                string.Join(" ", p.ExpertsPerTokenByLayer.Select(e => e.ToString("F2", CultureInfo.InvariantCulture))), p.FlopsVsTop2.ToString("F2", CultureInfo.InvariantCulture),
                p.TokensPerSecond.ToString("F1", CultureInfo.InvariantCulture));
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine("[grey]bAbI accuracy is not measured yet (it needs a model trained on the tasks).[/]");
        return 0;
    }

    private sealed class Disposer(Func<ValueTask> dispose) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => dispose();
    }
}
