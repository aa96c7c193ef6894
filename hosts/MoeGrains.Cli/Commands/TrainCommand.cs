using MoeGrains.Training;
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using MoeGrains.Generation;
using MoeGrains.Plugins.Mixtral;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe train</c>: trains the reference Mixtral-style model on a text file (tinyshakespeare by default, the last 10%
/// held out) on the CPU, with a progress line, periodic held-out evaluation, checkpoints and resuming.
/// </summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var data = new Option<string?>("--data") { Description = "Text file to train on (default: tinyshakespeare from the shared data)" };
        var output = new Option<string>("--out") { Description = "Checkpoint folder (model.safetensors, config.json, training state)", DefaultValueFactory = _ => CliPaths.ReferenceModel };
        var tokenizer = new Option<string>("--tokenizer") { Description = "char (one token per character) or gpt2 (BPE)", DefaultValueFactory = _ => "char" };
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => 4 };
        var dModel = new Option<int>("--d-model") { DefaultValueFactory = _ => 128 };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => 4 };
        var kvHeads = new Option<int?>("--kv-heads") { Description = "Key/value heads (default: --heads)" };
        var experts = new Option<int>("--experts") { DefaultValueFactory = _ => 8 };
        var topK = new Option<int?>("--top-k") { Description = "Experts per token (default 2; 4 for --router adamoe, AdaMoE's larger k)" };
        var router = new Option<string>("--router") { Description = $"Training-time routing policy: {string.Join(", ", RoutingPolicies.All)}", DefaultValueFactory = _ => RoutingPolicies.TopK };
        var topP = new Option<double>("--top-p") { Description = "topp: the probability mass threshold p", DefaultValueFactory = _ => 0.4 };
        var entropyCoef = new Option<double>("--entropy-coef") { Description = "topp: weight of the dynamic (router entropy) loss", DefaultValueFactory = _ => 1e-4 };
        var nullExperts = new Option<int>("--null-experts") { Description = "adamoe: null experts m", DefaultValueFactory = _ => 16 };
        var consistency = new Option<double>("--consistency-alpha") { Description = "thor: weight of the consistency (symmetric KL) loss", DefaultValueFactory = _ => 1.0 };
        var babi = new Option<string?>("--babi") { Description = "Train on these bAbI tasks' training stories instead of --data (e.g. qa1,qa6,qa15)" };
        var answerOnly = new Option<bool>("--answer-only") { Description = "With --babi: the loss counts the answer tokens only (the story and question tokens are inputs, not targets)" };
        var dFf = new Option<int>("--d-ff") { Description = "Expert inner size", DefaultValueFactory = _ => 256 };
        var context = new Option<int?>("--context") { Description = "max_position_embeddings (default: --block)" };
        var block = new Option<int>("--block") { Description = "Tokens per training window", DefaultValueFactory = _ => 128 };
        var batch = new Option<int>("--batch") { DefaultValueFactory = _ => 16 };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 5000 };
        var minutes = new Option<double>("--minutes") { Description = "Wall-clock budget: stop, the schedule decayed, when spent (0: steps only)", DefaultValueFactory = _ => 10 };
        var lr = new Option<double>("--lr") { DefaultValueFactory = _ => 3e-3 };
        var minLr = new Option<double>("--min-lr-ratio") { DefaultValueFactory = _ => 0.1 };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 100 };
        var weightDecay = new Option<double>("--weight-decay") { DefaultValueFactory = _ => 0.1 };
        var auxCoef = new Option<double>("--aux-coef") { Description = "Weight of the load-balancing loss", DefaultValueFactory = _ => 0.01 };
        var evalEvery = new Option<int>("--eval-every") { DefaultValueFactory = _ => 250 };
        var evalWindows = new Option<int>("--eval-windows") { Description = "Held-out windows per periodic evaluation", DefaultValueFactory = _ => 32 };
        var checkpointEvery = new Option<int>("--checkpoint-every") { DefaultValueFactory = _ => 500 };
        var logEvery = new Option<int>("--log-every") { DefaultValueFactory = _ => 25 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 1337 };
        // One thread by default: on a shared machine a two-thread OpenMP team spends its time waiting for a descheduled member
        // (measured here: 2.7-4.1k tokens/s with one thread, 0.8-3k with two); on an idle machine try --threads 2.
        var threads = new Option<int>("--threads") { Description = "libtorch threads", DefaultValueFactory = _ => 1 };
        var resume = new Option<bool>("--resume") { Description = "Continue from the training state in --out (its sizes and tokenizer)" };
        var json = new Option<bool>("--json") { Description = "Print the summary as one JSON object (progress goes to stderr)" };
        var command = new Command("train", "Train the reference Mixtral-style MoE language model on a text file (CPU)")
        {
            data, output, tokenizer, layers, dModel, heads, kvHeads, experts, topK, dFf, context, block, batch, steps, minutes, lr, minLr, warmup,
            weightDecay, auxCoef, evalEvery, evalWindows, checkpointEvery, logEvery, seed, threads, resume, json, router, topP, entropyCoef, nullExperts, consistency, babi, answerOnly,
        };
        command.SetAction((parse, ct) =>
        {
            var asJson = parse.GetValue(json);
            var log = asJson ? Console.Error : Console.Out;
            var babiTasks = parse.GetValue(babi)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var dataPath = babiTasks is { Length: > 0 }
                ? (CliPaths.Data is { } bd ? Path.Combine(bd, "qa", "babi") : null)
                : parse.GetValue(data) ?? (CliPaths.Data is { } d ? Path.Combine(d, "text", "tinyshakespeare.txt") : null);
            if (babiTasks is { Length: > 0 } && dataPath is not null && !Directory.Exists(dataPath))
            {
                Console.Error.WriteLine($"bAbI folder not found: {dataPath}");
                return Task.FromResult(2);
            }
            if (dataPath is null || (babiTasks is not { Length: > 0 } && !File.Exists(dataPath)))
            {
                Console.Error.WriteLine(dataPath is null
                    ? "No training text: pass --data FILE, or set MOEGRAINS_DATA to the shared data folder (text/tinyshakespeare.txt)."
                    : $"Training text not found: {dataPath}");
                return Task.FromResult(2);
            }
            var folder = Path.GetFullPath(parse.GetValue(output)!);
            var options = new CausalLmTrainingOptions
            {
                Steps = parse.GetValue(steps), BatchSize = parse.GetValue(batch), BlockSize = parse.GetValue(block), LearningRate = parse.GetValue(lr),
                MinLearningRateRatio = parse.GetValue(minLr), WarmupSteps = parse.GetValue(warmup), WeightDecay = parse.GetValue(weightDecay),
                EvalEvery = parse.GetValue(evalEvery), EvalWindows = parse.GetValue(evalWindows), CheckpointEvery = parse.GetValue(checkpointEvery),
                LogEvery = parse.GetValue(logEvery), Seed = parse.GetValue(seed),
                TimeBudget = parse.GetValue(minutes) is > 0 and var m ? TimeSpan.FromMinutes(m) : null,
            };
            if (options.Validate() is { } optionsError)
            {
                Console.Error.WriteLine(optionsError);
                return Task.FromResult(2);
            }
            string text;
            try
            {
                text = babiTasks is { Length: > 0 } ? BabiTasks.TrainingText(dataPath, babiTasks) : File.ReadAllText(dataPath);
            }
            catch (Exception e) when (e is ArgumentException or FileNotFoundException or InvalidDataException)
            {
                Console.Error.WriteLine(e.Message);
                return Task.FromResult(2);
            }
            MixtralConfig config;
            ITextTokenizer tok;
            var resuming = parse.GetValue(resume) && LanguageModelCheckpoint.Exists(folder);
            try
            {
                if (resuming)
                {
                    var (weights, configJson) = LanguageModelCheckpoint.Open(folder);
                    config = configJson is not null ? MixtralConfig.FromJson(configJson) : MixtralConfig.FromSettings(weights.Metadata);
                    tok = TextTokenizers.FromMetadata(weights.Metadata);
                }
                else
                {
                    tok = TextTokenizers.ForTraining(parse.GetValue(tokenizer)!, text);
                    var policy = parse.GetValue(router)!.Trim().ToLowerInvariant();
                    config = new MixtralConfig
                    {
                        VocabSize = tok.VocabSize, HiddenSize = parse.GetValue(dModel), IntermediateSize = parse.GetValue(dFf),
                        NumHiddenLayers = parse.GetValue(layers), NumAttentionHeads = parse.GetValue(heads),
                        NumKeyValueHeads = parse.GetValue(kvHeads) ?? parse.GetValue(heads), NumLocalExperts = parse.GetValue(experts),
                        NumExpertsPerTok = parse.GetValue(topK) ?? (policy == RoutingPolicies.AdaMoE ? 4 : 2), MaxPositionEmbeddings = parse.GetValue(context) ?? options.BlockSize,
                        RouterAuxLossCoef = parse.GetValue(auxCoef), RouterPolicy = policy, TopPThreshold = parse.GetValue(topP),
                        RouterEntropyLossCoef = parse.GetValue(entropyCoef), NumNullExperts = policy == RoutingPolicies.AdaMoE ? parse.GetValue(nullExperts) : 0,
                        ThorConsistencyAlpha = parse.GetValue(consistency),
                    }.EnsureValid();
                }
                if (options.BlockSize > config.MaxPositionEmbeddings)
                {
                    throw new ArgumentException($"--block {options.BlockSize} exceeds the model's context of {config.MaxPositionEmbeddings} positions.");
                }
            }
            catch (Exception e) when (e is ArgumentException or InvalidDataException or Contracts.CheckpointException)
            {
                Console.Error.WriteLine(e.Message);
                return Task.FromResult(2);
            }

            set_num_threads(Math.Max(1, parse.GetValue(threads)));
            var sw = Stopwatch.StartNew();
            int[] ids;
            try
            {
                ids = tok.Encode(text);
            }
            catch (ArgumentException e)
            {
                Console.Error.WriteLine($"The text cannot be encoded with the checkpoint's tokenizer: {e.Message}");
                return Task.FromResult(2);
            }
            var answersOnly = parse.GetValue(answerOnly);
            if (answersOnly && babiTasks is not { Length: > 0 })
            {
                Console.Error.WriteLine("--answer-only needs --babi: only bAbI text has answers.");
                return Task.FromResult(2);
            }
            bool[]? mask = null;
            if (answersOnly)
            {
                // The same stories as the text, encoded story by story, each answer token marked.
                (ids, mask) = BabiTasks.Tokens(BabiTasks.TrainingStories(dataPath, babiTasks!), tok.Encode);
            }
            var corpus = new TokenCorpus(ids, 0.1, mask);
            using var model = new MixtralForCausalLM(config, options.Seed);
            model.ReseedRouting((int)options.Seed);
            var parameterCount = model.parameters().Sum(p => p.numel());
            var active = parameterCount - (long)config.NumHiddenLayers * (config.NumLocalExperts - config.NumExpertsPerTok) * 3L * config.HiddenSize * config.IntermediateSize;
            log.WriteLine($"{Path.GetFileName(dataPath)}: {text.Length:N0} characters, {ids.Length:N0} {tok.Name} tokens ({tok.VocabSize} in the vocabulary), " +
                $"{corpus.Train.Length:N0} for training, the last {corpus.HeldOut.Length:N0} held out; encoded in {sw.ElapsedMilliseconds} ms" +
                (mask is null ? "" : $"; loss on the {mask.Count(m => m):N0} answer tokens only"));
            log.WriteLine($"model: {config.NumHiddenLayers} layers, d_model {config.HiddenSize}, {config.NumAttentionHeads} heads, {config.NumLocalExperts} SwiGLU experts " +
                $"(d_ff {config.IntermediateSize}) top-{config.NumExpertsPerTok}, context {config.MaxPositionEmbeddings}: {parameterCount / 1e6:F2} M parameters, {active / 1e6:F2} M active per token");
            log.WriteLine($"routing: {config.RouterPolicy}" + config.RouterPolicy switch
            {
                RoutingPolicies.TopP => $" (p {config.TopPThreshold}, entropy loss ×{config.RouterEntropyLossCoef}, balance loss ×{config.RouterAuxLossCoef})",
                RoutingPolicies.AdaMoE => $" ({config.NumNullExperts} null experts, top-{config.NumExpertsPerTok} of {config.NumLocalExperts + config.NumNullExperts}, group balance loss ×{config.RouterAuxLossCoef})",
                RoutingPolicies.Thor => $" (a random expert per layer and pass, two passes, consistency α {config.ThorConsistencyAlpha})",
                _ => $" (top-{config.NumExpertsPerTok}, balance loss ×{config.RouterAuxLossCoef})",
            } + $"; served by the '{RoutingPolicies.ServingRouter(config.RouterPolicy)}' router plugin");
            log.WriteLine($"training: batch {options.BatchSize} × {options.BlockSize} tokens, {options.Steps} steps{(options.TimeBudget is { } tb ? $" or {tb.TotalMinutes:F1} min" : "")}, " +
                $"AdamW lr {options.LearningRate:G3} (warm-up {options.WarmupSteps}, cosine to ×{options.MinLearningRateRatio}), {get_num_threads()} threads, seed {options.Seed} → {folder}");

            var trainer = new CausalLmTrainer(model, (x, y) =>
            {
                var l = model.Loss(x, y);
                return (l.Total, l.LanguageModel, l.LoadBalancing);
            }, corpus, options);
            var live = !asJson && !Console.IsOutputRedirected;
            TrainingSummary summary;
            try
            {
                summary = trainer.Run(folder, config.ToJson(), MixtralCheckpointMetadata.Create(config, tok), resuming, e => Report(log, e, live), ct);
            }
            catch (OperationCanceledException)
            {
                log.WriteLine();
                log.WriteLine("cancelled; the last checkpoint is kept (resume with --resume)");
                return Task.FromResult(130);
            }
            if (live) log.WriteLine();
            log.WriteLine($"done: {summary.Steps} steps, {summary.Tokens:N0} tokens in {Format(summary.TrainingTime)} ({summary.TokensPerSecond:N0} tokens/s while training)" +
                $"{(summary.StoppedByTimeBudget ? ", stopped by the time budget" : "")}; held-out loss {summary.HeldOutLoss:F4} nats/token over {summary.HeldOutTokens:N0} tokens; checkpoint {folder}");
            if (asJson)
            {
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    data = dataPath, babi_tasks = babiTasks, answer_only = answersOnly, router = config.RouterPolicy, checkpoint = folder, tokenizer = tok.Name, vocab_size = tok.VocabSize, parameters = parameterCount, active_parameters = active,
                    steps = summary.Steps, tokens = summary.Tokens, training_seconds = summary.TrainingTime.TotalSeconds, total_seconds = summary.TotalTime.TotalSeconds,
                    tokens_per_s = summary.TokensPerSecond, train_loss = summary.FinalTrainingLoss, heldout_loss = summary.HeldOutLoss, heldout_tokens = summary.HeldOutTokens,
                    stopped_by_time_budget = summary.StoppedByTimeBudget, threads = get_num_threads(), config,
                }, BenchCommands.JsonOptions));
            }
            return Task.FromResult(0);
        });
        return command;
    }

    private static void Report(TextWriter log, TrainingEvent e, bool live)
    {
        switch (e)
        {
            case TrainingProgress p:
                var line = $"step {p.Step,5}/{p.Steps}  loss {p.LanguageModelLoss:F4}  aux {p.AuxiliaryLoss:F3}  lr {p.LearningRate:E2}  {p.TokensPerSecond,7:N0} tok/s  elapsed {Format(p.Elapsed)}  ETA {Format(p.Remaining)}";
                if (live) log.Write("\r" + line.PadRight(110));
                else log.WriteLine(line);
                break;
            case HeldOutEvaluation v:
                if (live) log.WriteLine();
                log.WriteLine($"step {v.Step,5}  held-out loss {v.Loss:F4} nats/token over {v.Tokens:N0} tokens{(v.Full ? " (all held-out text)" : "")}  elapsed {Format(v.Elapsed)}");
                break;
            case CheckpointWritten c:
                if (live) log.WriteLine();
                log.WriteLine($"step {c.Step,5}  checkpoint written to {c.Folder}");
                break;
            case TrainingResumed r:
                log.WriteLine($"resumed at step {r.Step} ({Format(r.Elapsed)} already spent)");
                break;
        }
    }

    private static string Format(TimeSpan t) => t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss") : t.ToString(@"m\:ss");
}
