using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using MoeGrains.Checkpoints;
using MoeGrains.Client;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Plugins;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe generate "prompt"</c>: continues a prompt with a trained checkpoint, streaming each token as it is chosen,
/// in this process or through a local cluster (backbone in a session grain, experts in expert grains over the silos).
/// </summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var prompt = new Argument<string>("prompt") { Description = "The text to continue" };
        var checkpoint = new Option<string>("--checkpoint") { Description = "Checkpoint folder or model.safetensors", DefaultValueFactory = _ => CliPaths.ReferenceModel };
        var maxTokens = new Option<int>("--max-tokens") { Description = $"New tokens to generate (1..{GenerationOptions.MAX_NEW_TOKENS})", DefaultValueFactory = _ => 200 };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature; 0 is greedy", DefaultValueFactory = _ => 0.8 };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling mass, in (0, 1]", DefaultValueFactory = _ => 0.95 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 1 };
        var silos = new Option<int>("--silos") { Description = "0: everything in this process; N: a local cluster of N silos (experts spread over them)", DefaultValueFactory = _ => 0 };
        // One token at a time is a chain of tiny operations: one thread beats a team that waits for each other (much more
        // so on a busy machine, where OpenMP's spinning threads are descheduled).
        var threads = new Option<int>("--threads") { Description = "libtorch threads", DefaultValueFactory = _ => 1 };
        var gateway = new Option<int>("--gateway") { Description = "Generate through a running cluster (moe serve) at this gateway port, as an external client; --checkpoint gives the tokenizer", DefaultValueFactory = _ => 0 };
        var model = new Option<string>("--model") { Description = "The served model's name, with --gateway", DefaultValueFactory = _ => "lm" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object at the end instead of streaming" };
        var router = new Option<string?>("--router") { Description = "Router plugin to use instead of the model's (topk, topp, capacity, rank, ...)" };
        var scmoe = new Option<bool>("--scmoe") { Description = "Self-contrast decoding: the model's routing contrasted with rank-k routing (SCMoE)" };
        var alpha = new Option<double>("--alpha") { Description = "SCMoE plausibility threshold", DefaultValueFactory = _ => SelfContrastDecoding.DEFAULT_ALPHA };
        var beta = new Option<double>("--beta") { Description = "SCMoE contrast strength", DefaultValueFactory = _ => SelfContrastDecoding.DEFAULT_BETA };
        var weakRank = new Option<int>("--weak-rank") { Description = "SCMoE weak pass: the single expert at this 0-based rank", DefaultValueFactory = _ => SelfContrastDecoding.DEFAULT_WEAK_RANK };
        var command = new Command("generate", "Continue a prompt with a trained language model, streaming tokens (in process or through a local cluster)")
        {
            prompt, checkpoint, maxTokens, temperature, topP, seed, silos, gateway, model, threads, json, router, scmoe, alpha, beta, weakRank,
        };
        command.SetAction(async (parse, ct) =>
        {
            var options = new GenerationOptions
            {
                MaxTokens = parse.GetValue(maxTokens), Temperature = parse.GetValue(temperature), TopP = parse.GetValue(topP), Seed = parse.GetValue(seed),
            };
            try
            {
                var contrast = parse.GetValue(scmoe) ? new SelfContrastDecoding(parse.GetValue(alpha), parse.GetValue(beta)) { WeakRank = parse.GetValue(weakRank) } : null;
                contrast?.Validate();
                return await Run(parse.GetValue(prompt) ?? "", parse.GetValue(checkpoint)!, options, parse.GetValue(router), contrast,
                    parse.GetValue(silos), parse.GetValue(gateway), parse.GetValue(model)!, parse.GetValue(threads), parse.GetValue(json), ct);
            }
            catch (Exception e) when (e is GenerationRequestException or CheckpointException or ArgumentException or InvalidDataException or UnknownExpertException)
            {
                Console.Out.Flush();
                Console.Error.WriteLine(e is GenerationRequestException { Field: { } field } ? $"error: {field}: {e.Message}" : $"error: {e.Message}");
                return 2;
            }
            catch (GenerationFailedException e)
            {
                Console.Out.Flush();
                Console.Error.WriteLine($"error: the generation failed: {e.Message}");
                return 1;
            }
        });
        return command;
    }

    /// <summary>The tokens of a streamed generation, checking the sequence numbers; the end marker's failure is thrown.</summary>
    private static async IAsyncEnumerable<int> Streamed(IAsyncEnumerable<GenerationEvent> events, Action<GenerationEvent> end)
    {
        long expected = 0;
        await foreach (var e in events)
        {
            if (e.Sequence != expected)
            {
                throw new InvalidOperationException($"Token {expected} expected on the stream, got {e.Sequence}.");
            }
            if (e.IsEnd)
            {
                end(e);
                if (e.Finish == FinishReason.Error)
                {
                    throw new GenerationFailedException(e.Error ?? "The generation failed.");
                }
                yield break;
            }
            expected++;
            yield return e.Token;
        }
    }

    /// <summary>A generation that was accepted but failed while it ran (the end marker's error).</summary>
    private sealed class GenerationFailedException(string message) : Exception(message);

    private static async Task<int> Run(string prompt, string checkpoint, GenerationOptions options, string? router, SelfContrastDecoding? contrast,
        int silos, int gateway, string modelName, int threads, bool asJson, CancellationToken ct)
    {
        if (silos < 0)
        {
            throw new ArgumentException($"--silos must be 0 (in process) or a number of silos, got {silos}.");
        }
        if (gateway is < 0 or > 65535 || (gateway > 0 && silos > 0))
        {
            throw new ArgumentException($"--gateway must be a port (and not given with --silos), got {gateway}.");
        }
        var path = Path.GetFullPath(LanguageModelCheckpoint.WeightsPath(checkpoint));
        if (!File.Exists(path))
        {
            throw new CheckpointException($"No checkpoint at {path}: train one with `moe train --out {LanguageModelCheckpoint.Folder(checkpoint)}`.");
        }
        var file = SafeTensorsFile.Open(path);
        var tokenizer = TextTokenizers.FromMetadata(file.Metadata);
        var context = file.Metadata.TryGetValue("max_position_embeddings", out var c) && int.TryParse(c, out var n) ? n : 0;
        // The same checks as the HTTP API and the session grain, before anything starts.
        GenerationRequestValidator.CheckOptions(options);
        var catalog = PluginCatalog.Load(CliPaths.Plugins);
        GenerationRequestValidator.CheckRouter(router, catalog);
        var experts = file.Metadata.TryGetValue("num_local_experts", out var ne) && int.TryParse(ne, out var en) ? en : (int?)null;
        contrast?.Validate(experts);
        var ids = GenerationRequestValidator.CheckPrompt(prompt, tokenizer.Encode, context);
        options = options with { StopToken = TextTokenizers.StopToken(tokenizer) };
        set_num_threads(Math.Max(1, threads));

        MoeClient? client = null;
        var sessions = new List<DecoderSession>();
        var grains = new List<IDecoderSessionGrain>();
        var where = "in process";
        var started = Stopwatch.StartNew();
        try
        {
            // The experts per token of the first (strong) session, per layer.
            Func<double[]>? expertsPerToken = null;
            DecoderStepAsync Session(string? routerName)
            {
                if (client is null)
                {
                    // A per-sequence router (THOR per sequence) draws from the seed, as the session grain does.
                    var modelRouter = file.Metadata.TryGetValue(Models.ModelSpec.RouterPluginKey, out var mr) ? mr : "topk";
                    var session = DecoderSession.InProcess(catalog, path, CliServices.Provider, "lm", RouterNames.ForSequence(routerName, modelRouter, catalog, options.Seed));
                    sessions.Add(session);
                    expertsPerToken ??= () => [.. session.ExpertSlots.Select(e => (double)e / Math.Max(1, session.Position))];
                    return session.AppendAsync;
                }
                var grain = client.Grains.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key(modelName, Guid.NewGuid().ToString("N")));
                grains.Add(grain);
                DecoderStep? last = null;
                expertsPerToken ??= () => last is null ? [] : [.. last.ExpertSlots.Select(e => (double)e / Math.Max(1, last.Position))];
                var append = RemoteSession.Appender(grain, routerName);
                return async (tokens, token) => (last = await append(tokens, token)).Logits;
            }
            if (gateway > 0)
            {
                try
                {
                    client = await MoeClient.ConnectAsync(new MoeClientOptions { GatewayPort = gateway }, ct);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    throw new GenerationFailedException($"no cluster answers at gateway port {gateway} ({e.Message})");
                }
                where = $"through the cluster at gateway {gateway} (model '{modelName}')";
            }
            else if (silos > 0)
            {
                client = await MoeClient.StartEmbeddedAsync(silos, (_, silo) => silo.AddMoeGrains(o =>
                {
                    o.Device = "cpu";
                    o.PluginFolder = CliPaths.Plugins;
                    o.Models[modelName] = path;
                }), ct);
                where = $"through a local cluster of {silos} silos";
            }
            IAsyncEnumerable<int> stream;
            if (client is not null)
            {
                // Through the cluster: the session grain generates (SCMoE: both passes) and publishes each token on an Orleans stream.
                where += contrast is null ? ", streamed by the session grain"
                    : $", SCMoE (alpha {contrast.Alpha}, beta {contrast.Beta}, weak routing '{contrast.WeakRouter}') streamed by the session grain";
                stream = Streamed(client.GenerateAsync(modelName, ids, options with { SelfContrast = contrast }, router, ct), e => expertsPerToken = () => e.ExpertsPerToken);
            }
            else
            {
                var step = Session(router);
                if (contrast is not null)
                {
                    step = contrast.Step(step, Session(contrast.WeakRouter));
                    where += $", SCMoE (alpha {contrast.Alpha}, beta {contrast.Beta}, weak routing '{contrast.WeakRouter}')";
                }
                stream = TextGeneration.GenerateAsync(step, ids, options, context, ct);
            }
            var setup = started.Elapsed;

            var generated = new List<int>();
            var printed = 0;
            var sw = Stopwatch.StartNew();
            TimeSpan? firstToken = null;
            await foreach (var token in stream)
            {
                if (firstToken is null && !asJson)
                {
                    Console.Write(prompt); // only once the request has proved servable
                }
                firstToken ??= sw.Elapsed;
                generated.Add(token);
                if (!asJson)
                {
                    // Decode the whole continuation and print what is new: a BPE token may complete a character only later.
                    var text = tokenizer.Decode(generated);
                    if (text.Length > printed && !char.IsHighSurrogate(text[^1]) && text[^1] != '\uFFFD')
                    {
                        Console.Write(text[printed..]);
                        printed = text.Length;
                    }
                }
            }
            var elapsed = sw.Elapsed;
            var continuation = tokenizer.Decode(generated);
            var speed = generated.Count / Math.Max(elapsed.TotalSeconds, 1e-9);
            var perLayer = expertsPerToken?.Invoke() ?? [];
            if (asJson)
            {
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    prompt, text = continuation, tokens = generated.Count, prompt_tokens = ids.Length, mode = client is null ? "in-process" : "cluster", silos, gateway, router, scmoe = contrast is not null,
                    temperature = options.Temperature, top_p = options.TopP, seed = options.Seed, setup_seconds = setup.TotalSeconds,
                    first_token_ms = firstToken?.TotalMilliseconds, seconds = elapsed.TotalSeconds, tokens_per_s = speed,
                    experts_per_token = perLayer.Length == 0 ? 0 : perLayer.Average(), experts_per_token_by_layer = perLayer, token_ids = generated,
                }, BenchCommands.JsonOptions));
            }
            else
            {
                if (printed < continuation.Length) Console.Write(continuation[printed..]);
                Console.WriteLine();
                Console.Error.WriteLine($"[{generated.Count} tokens {where} in {elapsed.TotalSeconds:F2} s: {speed:F1} tokens/s; first token after {firstToken?.TotalMilliseconds:F0} ms; set-up {setup.TotalSeconds:F1} s; " +
                    $"{(perLayer.Length == 0 ? 0 : perLayer.Average()):F2} experts per token (by layer: {string.Join(", ", perLayer.Select(e => e.ToString("F2", System.Globalization.CultureInfo.InvariantCulture)))})]");
            }
            return 0;
        }
        finally
        {
            foreach (var g in grains) await g.Close();
            foreach (var session in sessions) session.Dispose();
            if (client is not null)
            {
                await client.DisposeAsync();
            }
        }
    }
}
