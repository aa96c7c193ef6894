using Microsoft.Extensions.DependencyInjection;
using System.CommandLine;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Placement;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>The reference model's checkpoint with its tokenizer and text, as the live-cluster benches use them.</summary>
internal sealed record LanguageModelBenchData(string WeightsPath, IReadOnlyDictionary<string, string> Metadata, ITextTokenizer Tokenizer, string Text)
{
    /// <summary>The last 10% of the text, tokenized: what training never saw.</summary>
    public long[] HeldOut { get; } = Tokenizer.Encode(Text[(int)(Text.Length * 0.9)..]).Select(t => (long)t).ToArray();
}

/// <summary>What <c>moe bench placement</c> and <c>moe bench replication</c> share: the checkpoint, the text, the cluster.</summary>
internal static class LanguageModelBench
{
    /// <summary><c>--checkpoint</c>: the reference model's folder by default.</summary>
    public static Option<string> CheckpointOption() =>
        new("--checkpoint") { Description = "Checkpoint folder or model.safetensors", DefaultValueFactory = _ => CliPaths.ReferenceModel };

    /// <summary><c>--data</c>: the text whose last 10% gives the prompts.</summary>
    public static Option<string?> DataOption() => new("--data") { Description = "Text whose last 10% is held out (default: tinyshakespeare)" };

    /// <summary>The failures that are the user's to fix (a bad checkpoint, option or plan): printed as <c>error:</c>, exit code 2.</summary>
    public static bool IsUserError(Exception e) =>
        e is CheckpointException or ArgumentException or InvalidDataException or UnknownExpertException or GenerationRequestException or PlacementInfeasibleException;

    /// <summary>Checks and opens the checkpoint folder and reads the text (default: tinyshakespeare from the shared data).</summary>
    public static async Task<LanguageModelBenchData> LoadAsync(string checkpoint, string? dataPath, int threads, CancellationToken ct)
    {
        var path = Path.GetFullPath(LanguageModelCheckpoint.WeightsPath(checkpoint));
        if (!File.Exists(path))
        {
            throw new ArgumentException($"No checkpoint at {path}: train one with `moe train --minutes 2 --out checkpoints/shakespeare`.");
        }
        dataPath ??= CliPaths.Data is { } d ? Path.Combine(d, "text", "tinyshakespeare.txt") : throw new ArgumentException("No text: pass --data or set MOEGRAINS_DATA.");
        set_num_threads(Math.Max(1, threads));
        var metadata = SafeTensorsFile.Open(path).Metadata;
        return new LanguageModelBenchData(path, metadata, TextTokenizers.FromMetadata(metadata), await File.ReadAllTextAsync(dataPath, ct));
    }

    /// <summary>The <paramref name="i"/>-th prompt window of <paramref name="length"/> tokens of <paramref name="source"/> (spread by a prime stride).</summary>
    public static long[] Window(long[] source, int i, int length) => source.Skip(i * 997 % Math.Max(1, source.Length - length)).Take(length).ToArray();

    /// <summary>
    /// A local cluster of <paramref name="silos"/> silos serving the checkpoint as <c>lm</c> with routing traces at
    /// <paramref name="samplingRate"/> (started once every silo is an active member); each recorder and the collector keep
    /// at most <paramref name="maxTokens"/> tokens.
    /// </summary>
    public static async Task<LocalCluster> StartTracedClusterAsync(int silos, string weightsPath, double samplingRate, CancellationToken ct,
        int maxTokens = RoutingTraceRecorder.DEFAULT_MAX_TOKENS)
    {
        var cluster = await LocalCluster.StartAsync(silos, (_, silo) => silo
            .AddMoeGrains(o => ServeLm(o, weightsPath))
            .AddRoutingTraces(o =>
            {
                o.SamplingRate = samplingRate;
                o.MaxTokens = maxTokens;
            }), cancellationToken: ct);
        return cluster;
    }

    /// <summary>The benches' silo settings: the checkpoint served as <c>lm</c> on the CPU with the built plugins, generous expert deadlines.</summary>
    public static void ServeLm(MoeGrainsOptions o, string weightsPath)
    {
        o.Device = "cpu";
        o.PluginFolder = CliPaths.Plugins;
        o.Models["lm"] = weightsPath;
        o.ExpertTimeoutMs = 120_000;
    }

    /// <summary>Waits (at most 30 s) until the cluster's trace collector has every route the silos recorded; returns the collector.</summary>
    public static async Task<IRoutingTraceGrain> TracesCollectedAsync(LocalCluster cluster, CancellationToken ct)
    {
        var recorded = cluster.Silos.Sum(s => s.Services.GetRequiredService<RoutingTraceSink>().Recorder("lm").Count);
        var collector = cluster.GrainFactory.GetGrain<IRoutingTraceGrain>("lm");
        for (var wait = 0; await collector.Count() < recorded && wait < 600; wait++) await Task.Delay(50, ct);
        return collector;
    }

    /// <summary>The model's shape for a report, from the checkpoint's metadata.</summary>
    public static object ModelInfo(IReadOnlyDictionary<string, string> metadata) => new
    {
        layers = metadata.GetValueOrDefault("num_hidden_layers"),
        experts = metadata.GetValueOrDefault("num_local_experts"),
        top_k = metadata.GetValueOrDefault("num_experts_per_tok"),
        d_model = metadata.GetValueOrDefault("hidden_size"),
    };

    /// <summary>The machine line of a report.</summary>
    public static string Machine(int threads) => $"{Environment.ProcessorCount} cores, {threads} libtorch thread(s), in-process silos on loopback";

    /// <summary>
    /// Greedy decoding of <paramref name="tokens"/> tokens after <paramref name="prompt"/> in a new session grain of
    /// <c>lm</c> (a context-coherent one when <paramref name="coherent"/>), closed at the end; with the cross-silo traffic of the decoding.
    /// </summary>
    public static async Task<GreedyRun> GreedyAsync(IGrainFactory grains, bool coherent, string name, long[] prompt, int tokens, CancellationToken ct)
    {
        var key = IDecoderSessionGrain.Key("lm", name);
        Func<long[], Task<DecoderStep>> append = coherent
            ? t => grains.GetGrain<ICoherentDecoderSessionGrain>(key).Append(t, null, ct)
            : t => grains.GetGrain<IDecoderSessionGrain>(key).Append(t, null, ct);
        var step = await append(prompt);
        var (m0, b0) = (step.CrossSiloMessages, step.CrossSiloBytes);
        var output = new List<long>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (var i = 0; i < tokens; i++)
        {
            long next = TokenSampler.ArgMax(step.Logits);
            output.Add(next);
            step = await append([next]);
        }
        var seconds = sw.Elapsed.TotalSeconds;
        if (coherent) await grains.GetGrain<ICoherentDecoderSessionGrain>(key).Close();
        else await grains.GetGrain<IDecoderSessionGrain>(key).Close();
        return new GreedyRun(output, step.CrossSiloMessages - m0, step.CrossSiloBytes - b0, seconds);
    }
}

/// <summary>Tokens of one greedy decoding, and the cross-silo messages and bytes it took.</summary>
internal sealed record GreedyRun(List<long> Tokens, long Messages, long Bytes, double Seconds);
