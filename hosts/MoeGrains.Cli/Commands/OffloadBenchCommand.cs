using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Models;
using MoeGrains.Offload;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe bench offload</c>: experts that do not fit. For budgets of 25, 50 and 100% of the experts and each policy
/// (LRU, LFU, predictive, predictive with token scheduling), runs (1) the reference language model, greedy decoding of
/// concurrent requests with its experts in an <see cref="ExpertWeightStore"/>, and (2) a workload replayed from the real
/// Mixtral-8x7B routing statistics (layers 0, 7, 15 as three layers of stored SwiGLU experts, routes sampled from the
/// counts); reports hit ratio, loads and bytes per token, peak device bytes and tokens/s against everything resident.
/// </summary>
internal static class OffloadBenchCommand
{
    internal static readonly double[] Budgets = [0.25, 0.5, 1.0];
    internal static readonly string[] Policies = ["lru", "lfu", "predictive", "predictive+scheduling"];

    internal sealed record OffloadRun(
        string Workload, double BudgetFraction, string Policy, double HitRatio, double LoadsPerToken, double DemandLoadsPerToken,
        double BytesPerToken, long PeakDeviceBytes, double? MemorySaved, double ExpertMemorySaved, long PeakDeviceExpertBytes, long PeakCacheBytes, int PeakResidentExperts, double TokensPerS, double SlowdownVsResident,
        double StallMsPerToken, double? PredictionRecall, double? PredictionPrecision, double? DistinctExpertsPerBatchLayer,
        long Tokens, bool? IdenticalToResident, int? ResidentAttentionLayers, double? AttentionBytesPerToken)
    {
        /// <summary>Cluster rows: prefetch hints the layer grains sent, reads they started, and those used before eviction.</summary>
        public long? PrefetchHints { get; init; }

        public long? Prefetches { get; init; }

        public long? PrefetchesUsed { get; init; }
    }

    internal sealed record OffloadReport(
        string Benchmark, object Model, object Mixtral, long AllExpertsBytes, long NonExpertBytes, bool? GreedyIdenticalAt25,
        object Quantisation, OffloadRun[] Runs);

    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the tables" };
        var checkpoint = new Option<string>("--checkpoint") { Description = "Reference model checkpoint (folder or model.safetensors)", DefaultValueFactory = _ => CliPaths.ReferenceModel };
        var requests = new Option<int>("--requests") { Description = "Concurrent requests", DefaultValueFactory = _ => 16 };
        var batch = new Option<int>("--batch") { Description = "Requests stepped together (a batch)", DefaultValueFactory = _ => 4 };
        var newTokens = new Option<int>("--new-tokens") { Description = "Greedy tokens generated per request", DefaultValueFactory = _ => 16 };
        var prompt = new Option<int>("--prompt") { Description = "Prompt characters per request", DefaultValueFactory = _ => 24 };
        var replayTokens = new Option<int>("--replay-tokens") { Description = "Tokens per request in the Mixtral replay", DefaultValueFactory = _ => 16 };
        var replayRequests = new Option<int>("--replay-requests") { Description = "Concurrent requests in the Mixtral replay", DefaultValueFactory = _ => 32 };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 1 };
        var skipModel = new Option<bool>("--no-model") { Description = "Only the Mixtral replay" };
        var skipCluster = new Option<bool>("--no-cluster") { Description = "Skip the 2-silo cluster rows (device budgets in the silos, prefetch hints)" };
        var attentionLayers = new Option<int>("--attention-layers") { Description = "Blocks whose attention weights stay on the device below a 100% budget (streamed layer by layer; 0: all resident)", DefaultValueFactory = _ => 1 };
        var predictorSource = new Option<string>("--predictor") { Description = "Where the routing-path predictor learns: cluster (a traced 2-silo cluster's routes) or local (in process)", DefaultValueFactory = _ => "cluster" };
        predictorSource.AcceptOnlyFromAmong("cluster", "local");
        var only = new Option<string?>("--only") { Description = "Run one item only (model:0.25:lru, model:greedy, model:quant, mixtral:0.5:lfu, ...)" };
        var command = new Command("offload", "Experts that do not fit: expert store, device budget, LRU/LFU/predictive caching, prefetch and token scheduling")
        {
            json, checkpoint, requests, batch, newTokens, prompt, replayTokens, replayRequests, threads, skipModel, skipCluster, only, attentionLayers, predictorSource,
        };
        command.SetAction(async (parse, ct) =>
        {
            set_num_threads(Math.Max(1, parse.GetValue(threads)));
            if (parse.GetValue(attentionLayers) < 0)
            {
                Console.Error.WriteLine($"error: --attention-layers must not be negative, got {parse.GetValue(attentionLayers)}.");
                return 2;
            }
            var progress = !parse.GetValue(json);
            _only = parse.GetValue(only);
            var dir = Path.Combine(Path.GetTempPath(), $"moegrains-offload-{Environment.ProcessId}");
            Directory.CreateDirectory(dir);
            try
            {
                var runs = new List<OffloadRun>();
                object modelInfo = "skipped";
                object quant = "skipped";
                bool? greedy = null;
                long allBytes = 0, nonExpert = 0;
                if (!parse.GetValue(skipModel) && (_only is null || _only.StartsWith("model", StringComparison.Ordinal) || _only.StartsWith("cluster", StringComparison.Ordinal)))
                {
                    var path = Path.GetFullPath(LanguageModelCheckpoint.WeightsPath(parse.GetValue(checkpoint)!));
                    if (!File.Exists(path))
                    {
                        Console.Error.WriteLine($"error: no checkpoint at {path}: train one with `moe train --out {LanguageModelCheckpoint.Folder(path)}`.");
                        return 2;
                    }
                    var m = await ModelWorkload(path, dir, parse.GetValue(requests), parse.GetValue(batch), parse.GetValue(prompt), parse.GetValue(newTokens), parse.GetValue(attentionLayers), parse.GetValue(predictorSource)!, progress, ct);
                    runs.AddRange(m.Runs);
                    if (!parse.GetValue(skipCluster) && (_only is null || _only.StartsWith("cluster", StringComparison.Ordinal)))
                    {
                        runs.AddRange(await OffloadClusterBench.RunAsync(path, m.Predictor, m.Prompts, parse.GetValue(newTokens), m.ExpertsPerSilo, parse.GetValue(attentionLayers), Want, t => Log(progress, t), ct));
                    }
                    (modelInfo, quant, greedy, allBytes, nonExpert) = (m.Info, m.Quantisation, m.Greedy, m.AllBytes, m.NonExpertBytes);
                }
                object mixInfo = "skipped";
                if (_only is null || _only.StartsWith("mixtral", StringComparison.Ordinal))
                {
                    (mixInfo, var mixRuns) = await OffloadReplayBench.RunAsync(dir, parse.GetValue(replayRequests), parse.GetValue(replayTokens), parse.GetValue(batch), progress, ct);
                    runs.AddRange(mixRuns);
                }
                var report = new OffloadReport("offload", modelInfo, mixInfo, allBytes, nonExpert, greedy, quant, [.. runs]);
                return BenchCommands.Output(report, parse.GetValue(json), Print);
            }
            catch (Exception e) when (e is CheckpointException or RoutingTraceFormatException or FileNotFoundException or ArgumentException)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 2;
            }
            finally
            {
                try { Directory.Delete(dir, recursive: true); } catch (IOException) { }
            }
        });
        return command;
    }

    private static string? _only;

    internal static bool Want(string item) => _only is null || _only == item;

    internal static void Log(bool progress, string text)
    {
        if (progress) Console.Error.WriteLine(text);
    }

    internal static ExpertCachePolicy PolicyOf(string name) => name.StartsWith("predictive", StringComparison.Ordinal) ? ExpertCachePolicy.Predictive
        : name == "lfu" ? ExpertCachePolicy.Lfu : ExpertCachePolicy.Lru;

    internal static int BudgetExperts(double fraction, int total) => Math.Max(1, (int)Math.Ceiling(fraction * total - 1e-9));

    // ---------------------------------------------------------------- the reference language model

    private sealed record ModelResult(object Info, object Quantisation, bool? Greedy, long AllBytes, long NonExpertBytes, List<OffloadRun> Runs,
        RoutingPathPredictor Predictor, long[][] Prompts, int ExpertsPerSilo);

    // Routes of the windows recorded from an in-process model, as paths with their token ids.
    private static async Task<RoutingPathPredictor> LocalPredictor(PluginCatalog plugins, ExpertWeightStore store, string path, ModelSpec spec, List<long[]> windows, CancellationToken ct)
    {
        var predictor = new RoutingPathPredictor(spec.Layers, spec.Experts, spec.TopK);
        using var recorder = new OffloadedMoeModel(plugins, store, CliServices.Provider, new OffloadOptions { Budget = new(store.Count) }, null, path);
        var rows = new List<int[][]>();
        long[] ids = [];
        recorder.OnRouted = (layer, routing, tokenIds) =>
        {
            if (layer == 0)
            {
                rows = [.. Enumerable.Range(0, routing.Tokens).Select(_ => new int[spec.Layers][])];
                ids = tokenIds ?? [];
            }
            for (var t = 0; t < routing.Tokens; t++) rows[t][layer] = routing.Experts[(t * routing.K)..((t + 1) * routing.K)];
            if (layer == spec.Layers - 1)
            {
                for (var t = 0; t < rows.Count; t++) predictor.Observe(new RoutePath(ids.Length > t ? ids[t] : -1, rows[t]));
            }
        };
        using var batcher = new SessionBatcher(recorder, plugins, path, CliServices.Provider, windows.Count);
        await batcher.StepAsync([.. windows.Select((w, i) => (i, w))], ct);
        return predictor;
    }

    private static async Task<ModelResult> ModelWorkload(string path, string dir, int requests, int batchSize, int promptChars, int newTokens, int attentionLayers, string predictorSource, bool progress, CancellationToken ct)
    {
        var plugins = PluginCatalog.Load(CliPaths.Plugins);
        var file = SafeTensorsFile.Open(path);
        var spec = ModelSpec.FromCheckpoint("lm", file);
        var tokenizer = TextTokenizers.FromMetadata(file.Metadata);
        var data = CliPaths.Data ?? throw new FileNotFoundException("The shared data folder was not found: set MOEGRAINS_DATA.");
        var text = File.ReadAllText(Path.Combine(data, "text", "tinyshakespeare.txt"));
        var split = (int)(text.Length * 0.9);
        Log(progress, $"reference model {path}: {spec.Layers} layers x {spec.Experts} experts, top-{spec.TopK}; writing the expert store...");
        var store = ExpertWeightStore.Write(file, spec, Path.Combine(dir, "lm-fp32"));
        var total = store.Count;
        var expertBytes = store.TotalDeviceBytes;
        var nonExpertBytes = NonExpertBytes(file);
        var routerBytes = RouterBytes(file);
        // Below a 100% budget the attention weights are streamed too (all but `attentionLayers` blocks' in host memory).
        var streamed = new BackboneOptions { ResidentAttentionLayers = attentionLayers };
        var resident = new BackboneOptions();

        // The predictor learns from routes on 24 training windows of 100 tokens: by default the routes a traced 2-silo
        // cluster recorded (each window through its own session grain), else (--predictor local) routes recorded in process.
        const int windows = 24;
        const int window = 100;
        var trainingWindows = Enumerable.Range(0, windows).Select(w =>
        {
            var start = (int)((long)w * (split - window) / windows);
            return tokenizer.Encode(text.Substring(start, window)).Select(i => (long)i).ToArray();
        }).ToList();
        RoutingPathPredictor predictor;
        object predictorInfo;
        if (predictorSource == "cluster")
        {
            Log(progress, "training the predictor from a 2-silo cluster's routing traces...");
            var trained = await ClusterTracePredictor.TrainAsync(path, trainingWindows, 2, ct);
            predictor = trained.Predictor;
            predictorInfo = new { source = "cluster routing traces (2 silos)", paths = trained.Tokens, skipped = trained.Skipped, tokens_known = predictor.TokensKnown, seconds = Math.Round(trained.Seconds, 1) };
        }
        else
        {
            Log(progress, "recording routes in process for the predictor...");
            predictor = await LocalPredictor(plugins, store, path, spec, trainingWindows, ct);
            predictorInfo = new { source = "in-process routes", paths = predictor.Observed, skipped = 0, tokens_known = predictor.TokensKnown, seconds = 0.0 };
        }

        // Requests: prompts from the held-out text.
        var prompts = Enumerable.Range(0, requests).Select(r =>
        {
            var start = split + (int)((long)r * (text.Length - split - promptChars - 1) / Math.Max(1, requests));
            return tokenizer.Encode(text.Substring(start, promptChars)).Select(i => (long)i).ToArray();
        }).ToArray();

        Log(progress, $"everything resident: {requests} requests x {newTokens} greedy tokens, batches of {batchSize}...");
        var allResident = await RunModel(plugins, store, path, nonExpertBytes, routerBytes, predictor, new OffloadOptions { Budget = new(total) }, resident, prompts, newTokens, batchSize, schedule: false, preload: true, ct);
        var runs = new List<OffloadRun>();
        foreach (var fraction in Budgets)
        {
            foreach (var policy in Policies)
            {
                if (!Want($"model:{fraction}:{policy}")) continue;
                Log(progress, $"budget {fraction:P0}, {policy}...");
                var options = new OffloadOptions { Budget = new(BudgetExperts(fraction, total)), Policy = PolicyOf(policy) };
                var r = await RunModel(plugins, store, path, nonExpertBytes, routerBytes, predictor, options, fraction < 1 ? streamed : resident,
                    prompts, newTokens, batchSize, policy.EndsWith("scheduling", StringComparison.Ordinal), false, ct);
                runs.Add(ToRun("reference-model", fraction, policy, r, allResident.TokensPerS, allResident.Outputs));
            }
        }

        // Greedy generation of one request at a 25% budget (predictive, prefetching) against the in-process model, token for token.
        var greedyPrompt = prompts[0];
        var quant = new List<object>();
        bool? identical = null;
        object greedyMemory = "skipped";
        IReadOnlyList<ExpertBitChoice> plan = [];
        List<int> offloaded = [];
        if (Want("model:greedy") || Want("model:quant"))
        {
        Log(progress, "greedy check at 25%: offloaded vs in-process...");
        List<int> reference;
        using (var session = DecoderSession.InProcess(plugins, path, CliServices.Provider, "lm"))
        {
            reference = await Greedy(session.AppendAsync, greedyPrompt, 48, ct);
        }
        using (var model = new OffloadedMoeModel(plugins, store, CliServices.Provider,
            new OffloadOptions { Budget = new(BudgetExperts(0.25, total)), Policy = ExpertCachePolicy.Predictive }, predictor, path))
        using (var single = new SessionBatcher(model, plugins, path, CliServices.Provider, 1, streamed))
        {
            offloaded = await Greedy(async (tokens, token) => (await single.StepAsync([(0, tokens)], token))[0], greedyPrompt, 48, ct);
            var cachePeak = model.Cache.Stats().PeakResidentBytes;
            var backbonePeak = single.Backbone.PeakDeviceBytes;
            var peak = backbonePeak + routerBytes + model.PeakDeviceExpertBytes;
            var attention = single.Backbone.Streaming;
            greedyMemory = new
            {
                peak_device_bytes = peak,
                peak_device_backbone_bytes = backbonePeak,
                router_bytes = routerBytes,
                peak_device_expert_bytes = model.PeakDeviceExpertBytes,
                peak_cache_bytes = cachePeak,
                all_resident_bytes = nonExpertBytes + expertBytes,
                memory_saved = Saved(peak, nonExpertBytes + expertBytes),
                memory_saved_counting_cache_budget = Saved(backbonePeak + routerBytes + cachePeak, nonExpertBytes + expertBytes),
                memory_saved_backbone_resident = Saved(nonExpertBytes + model.PeakDeviceExpertBytes, nonExpertBytes + expertBytes),
                expert_memory_saved = Saved(model.PeakDeviceExpertBytes, expertBytes),
                resident_attention_layers = attentionLayers,
                attention_loads = attention?.Loads ?? 0,
                attention_bytes_copied = attention?.BytesCopied ?? 0,
            };
        }
        identical = reference.SequenceEqual(offloaded);

        // Quantised stores: bytes and agreement of greedy output with the float32 model.
        Log(progress, "int8 and int4 stores...");
        // EdgeMoE's per-expert bit-widths: 8 or 4 bits each, calibrated (4-bit error x routing frequency) to an average of 6 bits.
        plan = Want("model:quant") ? BitWidthPlanner.Plan(file, spec, (l, e) => predictor.Marginal(l)[e], 6) : [];
        var variants = Want("model:quant")
            ? new (string Name, Func<int, int, int> Bits)[] { ("int8", (_, _) => 8), ("int4", (_, _) => 4), ("calibrated 8/4 (avg 6 bits)", BitWidthPlanner.Bits(plan)) }
            : [];
        foreach (var (name, bitsOf) in variants)
        {
            var q = ExpertWeightStore.Write(file, spec, Path.Combine(dir, $"lm-{name[..4]}"), bitsOf);
            using var model = new OffloadedMoeModel(plugins, q, CliServices.Provider,
                new OffloadOptions { Budget = new(BudgetExperts(0.25, total)), Policy = ExpertCachePolicy.Predictive }, predictor, path);
            using var single = new SessionBatcher(model, plugins, path, CliServices.Provider, 1);
            var tokens = await Greedy(async (t, token) => (await single.StepAsync([(0, t)], token))[0], greedyPrompt, 48, ct);
            var same = tokens.Zip(reference).TakeWhile(p => p.First == p.Second).Count();
            var stats = model.Cache.Stats();
            quant.Add(new
            {
                bits = name,
                experts_at_4_bits = q.Entries.Count(e => e.Bits == 4),
                experts_at_8_bits = q.Entries.Count(e => e.Bits == 8),
                store_bytes = q.Entries.Sum(e => e.FileBytes),
                fp32_store_bytes = store.Entries.Sum(e => e.FileBytes),
                bytes_per_token = (double)stats.BytesRead / (greedyPrompt.Length + tokens.Count),
                greedy_tokens_matching_fp32 = same,
                greedy_tokens = tokens.Count,
            });
        }
        }

        var info = new
        {
            checkpoint = path, layers = spec.Layers, experts = spec.Experts, top_k = spec.TopK, d_model = spec.DModel, d_ff = spec.DFf,
            requests, batch = batchSize, prompt_tokens = promptChars, new_tokens = newTokens, predictor = predictorInfo,
            resident_attention_layers_below_100 = attentionLayers, router_bytes = routerBytes,
            resident_tokens_per_s = allResident.TokensPerS, resident_distinct_experts_per_batch_layer = allResident.Distinct,
            greedy_continuation = tokenizer.Decode(offloaded),
            greedy_at_25 = greedyMemory,
            calibrated_bits = plan.Count == 0 ? null : plan.Select(c => new { c.Layer, c.Expert, importance = Math.Round(c.Importance, 4), error4 = Math.Round(c.Error4, 5), error8 = Math.Round(c.Error8, 5), c.Bits }).ToArray(),
        };
        return new ModelResult(info, quant, identical, expertBytes, nonExpertBytes, runs, predictor, prompts, (total + 1) / 2);
    }

    // The weights that stay resident besides the experts: embeddings, attention, norms, routers and the output head.
    // Counted as float32 on the device (what the stages and routers compute in), whatever the checkpoint's dtype.
    private static long NonExpertBytes(SafeTensorsFile checkpoint) => Float32Bytes(checkpoint, name => !name.Contains(".block_sparse_moe.experts.", StringComparison.Ordinal));

    // The routers' weights (resident in the offloaded model).
    private static long RouterBytes(SafeTensorsFile checkpoint) => Float32Bytes(checkpoint, name => name.Contains(".block_sparse_moe.gate.", StringComparison.Ordinal));

    private static long Float32Bytes(SafeTensorsFile checkpoint, Func<string, bool> which) => checkpoint.Tensors.Values
        .Where(t => which(t.Name)).Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b) * sizeof(float));

    /// <summary>The share of <paramref name="all"/> bytes not on the device when <paramref name="used"/> are.</summary>
    private static double Saved(long used, long all) => Math.Round(1 - (double)used / all, 4);

    private static async Task<List<int>> Greedy(DecoderStepAsync step, long[] prompt, int count, CancellationToken ct)
    {
        var result = new List<int>();
        var logits = await step(prompt, ct);
        for (var i = 0; i < count; i++)
        {
            var next = TokenSampler.ArgMax(logits);
            result.Add(next);
            if (i + 1 < count) logits = await step([next], ct);
        }
        return result;
    }

    internal sealed record RunResult(ExpertCacheStats Stats, PredictionStats Prediction, long Tokens, double Seconds, double Distinct, List<int>[] Outputs,
        long PeakDeviceExpertBytes, long NonExpertBytes, long AllExpertBytes)
    {
        public double TokensPerS => Tokens / Math.Max(Seconds, 1e-9);

        /// <summary>The most non-expert weight bytes on the device at once (backbone, streamed or not, and routers).</summary>
        public long PeakDeviceNonExpertBytes { get; init; }

        public int? ResidentAttentionLayers { get; init; }

        /// <summary>Attention weight bytes copied to the device by layer-wise streaming (null: attention resident or none).</summary>
        public long? AttentionBytesCopied { get; init; }
    }

    private static async Task<RunResult> RunModel(PluginCatalog plugins, ExpertWeightStore store, string path, long nonExpertBytes, long routerBytes, RoutingPathPredictor predictor, OffloadOptions options, BackboneOptions backbone,
        long[][] prompts, int newTokens, int batchSize, bool schedule, bool preload, CancellationToken ct)
    {
        using var model = new OffloadedMoeModel(plugins, store, CliServices.Provider, options, predictor, path);
        using var batcher = new SessionBatcher(model, plugins, path, CliServices.Provider, prompts.Length, backbone);
        if (preload) model.Preload();
        var start = model.Cache.Stats();
        var outputs = prompts.Select(_ => new List<int>()).ToArray();
        var logits = new float[prompts.Length][];
        long tokens = 0;
        var sw = Stopwatch.StartNew();
        foreach (var group in TokenScheduler.InOrder(prompts.Length, batchSize))
        {
            var answers = await batcher.StepAsync([.. group.Select(r => (r, prompts[r]))], ct);
            for (var i = 0; i < group.Length; i++) logits[group[i]] = answers[i];
            tokens += group.Sum(r => prompts[r].Length);
        }
        for (var step = 0; step < newTokens; step++)
        {
            var next = logits.Select(l => TokenSampler.ArgMax(l)).ToArray();
            for (var r = 0; r < prompts.Length; r++) outputs[r].Add(next[r]);
            if (step + 1 == newTokens) break;
            var groups = schedule
                ? TokenScheduler.Group([.. next.Select(t => predictor.Path(t).SelectMany(p => p).ToArray())], batchSize)
                : TokenScheduler.InOrder(prompts.Length, batchSize);
            foreach (var group in groups)
            {
                var answers = await batcher.StepAsync([.. group.Select(r => (r, new long[] { next[r] }))], ct);
                for (var i = 0; i < group.Length; i++) logits[group[i]] = answers[i];
                tokens += group.Length;
            }
        }
        var seconds = sw.Elapsed.TotalSeconds;
        model.Cache.WaitForPrefetches();
        return new RunResult(Minus(model.Cache.Stats(), start), model.Prediction, tokens, seconds, batcher.DistinctExpertsPerLayerCall, outputs,
            model.PeakDeviceExpertBytes, nonExpertBytes, store.TotalDeviceBytes)
        {
            PeakDeviceNonExpertBytes = batcher.Backbone.PeakDeviceBytes + routerBytes,
            AttentionBytesCopied = batcher.Backbone.Streaming?.BytesCopied,
            ResidentAttentionLayers = batcher.Backbone.Streamed ? backbone.ResidentAttentionLayers : store.Spec.Layers,
        };
    }

    internal static ExpertCacheStats Minus(ExpertCacheStats a, ExpertCacheStats b) => a with
    {
        Accesses = a.Accesses - b.Accesses, Hits = a.Hits - b.Hits, DemandLoads = a.DemandLoads - b.DemandLoads, Prefetches = a.Prefetches - b.Prefetches,
        PrefetchesUsed = a.PrefetchesUsed - b.PrefetchesUsed, Evictions = a.Evictions - b.Evictions, BytesRead = a.BytesRead - b.BytesRead, StallMs = a.StallMs - b.StallMs,
    };

    internal static OffloadRun ToRun(string workload, double fraction, string policy, RunResult r, double residentTokensPerS, List<int>[]? residentOutputs)
    {
        var s = r.Stats;
        var predictive = policy.StartsWith("predictive", StringComparison.Ordinal);
        return new OffloadRun(workload, fraction, policy, Math.Round(s.HitRatio, 4), Math.Round((double)s.Loads / r.Tokens, 4),
            Math.Round((double)s.DemandLoads / r.Tokens, 4), Math.Round((double)s.BytesRead / r.Tokens, 1),
            r.PeakDeviceNonExpertBytes + r.PeakDeviceExpertBytes,
            // The replay has experts only: no all-weights figure for it.
            r.NonExpertBytes > 0 ? Saved(r.PeakDeviceNonExpertBytes + r.PeakDeviceExpertBytes, r.NonExpertBytes + r.AllExpertBytes) : null,
            Saved(r.PeakDeviceExpertBytes, r.AllExpertBytes), r.PeakDeviceExpertBytes, s.PeakResidentBytes, s.PeakResidentExperts,
            Math.Round(r.TokensPerS, 1), Math.Round(residentTokensPerS / Math.Max(r.TokensPerS, 1e-9), 3), Math.Round(s.StallMs / r.Tokens, 3),
            predictive ? Math.Round(r.Prediction.Recall, 4) : null, predictive ? Math.Round(r.Prediction.Precision, 4) : null,
            Math.Round(r.Distinct, 3), r.Tokens,
            residentOutputs is null ? null : residentOutputs.Zip(r.Outputs).All(p => p.First.SequenceEqual(p.Second)), r.ResidentAttentionLayers,
            r.AttentionBytesCopied is { } copied ? Math.Round((double)copied / r.Tokens, 1) : null);
    }

    // ---------------------------------------------------------------- output

    private static void Print(OffloadReport report)
    {
        AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 220);
        foreach (var workload in report.Runs.Select(r => r.Workload).Distinct())
        {
            var table = new Table().Title($"[bold]{workload}[/]");
            foreach (var c in new[] { "budget", "policy", "hit ratio", "loads/token", "demand loads/token", "bytes/token", "peak device bytes", "memory saved (all weights)", "expert memory saved", "peak experts", "tokens/s", "slowdown", "stall ms/token", "recall", "distinct/batch-layer", "prefetch hints/reads/used", "same output" })
            {
                table.AddColumn(c);
            }
            foreach (var r in report.Runs.Where(r => r.Workload == workload))
            {
                table.AddRow($"{r.BudgetFraction:P0}", r.Policy, $"{r.HitRatio:F3}", $"{r.LoadsPerToken:F3}", $"{r.DemandLoadsPerToken:F3}", $"{r.BytesPerToken:N0}",
                    $"{r.PeakDeviceBytes:N0}", r.MemorySaved is { } saved ? $"{saved:P1}" : "-", $"{r.ExpertMemorySaved:P1}", $"{r.PeakResidentExperts}", $"{r.TokensPerS:F1}", $"{r.SlowdownVsResident:F2}x", $"{r.StallMsPerToken:F2}",
                    r.PredictionRecall is { } rc ? $"{rc:F3}" : "-", r.DistinctExpertsPerBatchLayer is { } d ? $"{d:F2}" : "-",
                    r.PrefetchHints is { } h ? $"{h}/{r.Prefetches}/{r.PrefetchesUsed}" : "-", r.IdenticalToResident is { } i ? (i ? "yes" : "no") : "-");
            }
            AnsiConsole.Write(table);
        }
        AnsiConsole.WriteLine($"all experts: {report.AllExpertsBytes:N0} bytes; non-expert weights: {report.NonExpertBytes:N0} bytes; greedy output at a 25% budget identical to in-process: {report.GreedyIdenticalAt25}");
        AnsiConsole.WriteLine(JsonSerializer.Serialize(report.Quantisation, BenchCommands.JsonOptions));
    }
}
