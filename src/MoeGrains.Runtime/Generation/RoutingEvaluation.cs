using System.Diagnostics;
using MoeGrains.Plugins;

namespace MoeGrains.Generation;

/// <summary>One routing policy's figures on held-out text.</summary>
/// <param name="Name">The policy: a router plugin name, or <c>scmoe</c>.</param>
/// <param name="HeldOutLoss">Mean next-token cross-entropy (nats per token) over the evaluated windows; null for SCMoE, a decoding rule whose distribution excludes tokens.</param>
/// <param name="ExpertsPerToken">Mean experts computed per token, over the layers (SCMoE counts both passes).</param>
/// <param name="ExpertsPerTokenByLayer">The same per layer.</param>
/// <param name="FlopsVsTop2">Expert FLOPs per token relative to top-2 routing.</param>
/// <param name="TokensPerSecond">Greedy generation speed, through the cluster when one was given.</param>
public sealed record RoutingPolicyResult(string Name, double? HeldOutLoss, double ExpertsPerToken, double[] ExpertsPerTokenByLayer, double FlopsVsTop2,
    double TokensPerSecond)
{
    /// <summary>Exact-match accuracy on bAbI: not measured yet (needs a model trained on the tasks).</summary>
    public double? BabiAccuracy { get; init; }
}

/// <summary>
/// Measures routing policies on one served checkpoint, each through the same decoder sessions that serve generation:
/// held-out loss and experts per token in process (teacher forcing on held-out windows, a fresh session per window),
/// and generation speed through whatever step function the caller gives (the cluster, usually).
/// </summary>
public sealed class RoutingEvaluation(PluginCatalog plugins, string checkpointPath, IServiceProvider services)
{
    public const string SelfContrast = "scmoe";

    /// <summary>Held-out loss and experts per token of <paramref name="router"/> (null: the checkpoint's own) over <paramref name="windows"/>.</summary>
    public async Task<(double? Loss, double[] ExpertsPerTokenByLayer)> HeldOutAsync(string? router, IReadOnlyList<int[]> windows, CancellationToken cancellationToken = default)
    {
        double nll = 0;
        long predicted = 0, fed = 0;
        double[]? slots = null;
        foreach (var window in windows)
        {
            using var session = DecoderSession.InProcess(plugins, checkpointPath, services, "eval", router);
            var logits = await session.AppendAllAsync([.. window.Select(t => (long)t)], cancellationToken);
            for (var i = 0; i + 1 < window.Length; i++)
            {
                nll += NegativeLogLikelihood(logits[i], window[i + 1]);
                predicted++;
            }
            slots ??= new double[session.ExpertSlots.Length];
            for (var l = 0; l < slots.Length; l++) slots[l] += session.ExpertSlots[l];
            fed += window.Length;
        }
        return (predicted == 0 ? null : nll / predicted, [.. (slots ?? []).Select(s => s / Math.Max(1, fed))]);
    }

    /// <summary>Greedy tokens per second of a step function over <paramref name="tokens"/> new tokens.</summary>
    public static async Task<double> SpeedAsync(DecoderStepAsync step, IReadOnlyList<int> prompt, int tokens, int context, CancellationToken cancellationToken = default)
    {
        var sw = Stopwatch.StartNew();
        var n = 0;
        await foreach (var _ in TextGeneration.GenerateAsync(step, prompt, new GenerationOptions { MaxTokens = tokens, Temperature = 0 }, context, cancellationToken))
        {
            n++;
        }
        return n / sw.Elapsed.TotalSeconds;
    }

    /// <summary>Non-overlapping windows of <paramref name="length"/> tokens spread evenly over <paramref name="ids"/>.</summary>
    public static int[][] Windows(int[] ids, int length, int count) =>
        [.. TokenCorpus.EvaluationOffsets(ids.Length, length, count).Select(o => ids.AsSpan(o, Math.Min(length, ids.Length - o)).ToArray())];

    public static double NegativeLogLikelihood(ReadOnlySpan<float> logits, int target)
    {
        var max = double.NegativeInfinity;
        foreach (var l in logits) max = Math.Max(max, l);
        double sum = 0;
        foreach (var l in logits) sum += Math.Exp(l - max);
        return Math.Log(sum) + max - logits[target];
    }
}
