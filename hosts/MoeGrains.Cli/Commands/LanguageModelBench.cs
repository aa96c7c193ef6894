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
    /// <paramref name="samplingRate"/> (started once every silo is an active member).
    /// </summary>
    public static async Task<LocalCluster> StartTracedClusterAsync(int silos, string weightsPath, double samplingRate, CancellationToken ct)
    {
        var cluster = await LocalCluster.StartAsync(silos, (_, silo) => silo
            .AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.PluginFolder = CliPaths.Plugins;
                o.Models["lm"] = weightsPath;
                o.ExpertTimeoutMs = 120_000;
            })
            .AddRoutingTraces(o => o.SamplingRate = samplingRate), cancellationToken: ct);
        return cluster;
    }
}
