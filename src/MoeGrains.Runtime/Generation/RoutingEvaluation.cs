using MoeGrains.Training;
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
    /// <summary>Exact-match accuracy per bAbI task (<c>qa1</c> → fraction of its test questions answered exactly); null when not measured.</summary>
    public IReadOnlyDictionary<string, double>? BabiAccuracy { get; init; }

    /// <summary>The checkpoint the policy ran on, and whether the policy is the one it was trained with.</summary>
    public string? Checkpoint { get; init; }

    public bool Trained { get; init; }

    /// <summary>Mean experts per token (summed over layers, divided by the layers) on easy and on hard tokens; null when not split.</summary>
    public double? ExpertsPerTokenEasy { get; init; }

    public double? ExpertsPerTokenHard { get; init; }

    /// <summary>How many tokens computed 0, 1, 2, ... experts per layer on average (rounded), over the evaluated tokens.</summary>
    public IReadOnlyDictionary<string, double>? ExpertsPerTokenDistribution { get; init; }
}

/// <summary>Per-token figures of a teacher-forced pass over held-out windows.</summary>
/// <param name="Loss">Mean next-token loss (nats).</param>
/// <param name="ExpertsPerTokenByLayer">Experts computed per token, per layer.</param>
/// <param name="TokenLoss">For each predicting position (every window position but the last), its next-token loss.</param>
/// <param name="TokenExperts">For the same positions, the experts computed there summed over the layers (empty when unknown).</param>
public sealed record HeldOutDetail(double? Loss, double[] ExpertsPerTokenByLayer, float[] TokenLoss, int[] TokenExperts);

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
        var detail = await HeldOutDetailAsync(router, windows, cancellationToken);
        return (detail.Loss, detail.ExpertsPerTokenByLayer);
    }

    /// <summary>
    /// As <see cref="HeldOutAsync"/>, with each position's loss and experts. With <paramref name="targets"/> (per window,
    /// per token: whether it is a target), only the positions predicting a target count (bAbI's answers).
    /// </summary>
    public async Task<HeldOutDetail> HeldOutDetailAsync(string? router, IReadOnlyList<int[]> windows, CancellationToken cancellationToken = default,
        IReadOnlyList<bool[]>? targets = null)
    {
        ArgumentNullException.ThrowIfNull(windows);
        if (targets is not null && (targets.Count != windows.Count || targets.Where((t, i) => t.Length != windows[i].Length).Any()))
        {
            throw new ArgumentException("The targets must match the windows, token for token.", nameof(targets));
        }
        double nll = 0;
        long predicted = 0, fed = 0;
        double[]? slots = null;
        var tokenLoss = new List<float>();
        var tokenExperts = new List<int>();
        var perToken = true;
        for (var w = 0; w < windows.Count; w++)
        {
            var window = windows[w];
            bool Counts(int i) => targets is null || targets[w][i + 1];
            using var session = DecoderSession.InProcess(plugins, checkpointPath, services, "eval", router);
            var logits = await session.AppendAllAsync([.. window.Select(t => (long)t)], cancellationToken);
            for (var i = 0; i + 1 < window.Length; i++)
            {
                if (!Counts(i)) continue;
                var l = NegativeLogLikelihood(logits[i], window[i + 1]);
                nll += l;
                tokenLoss.Add((float)l);
                predicted++;
            }
            perToken &= session.TokenExperts.Count == window.Length;
            if (perToken) tokenExperts.AddRange(session.TokenExperts.Take(window.Length - 1).Where((_, i) => Counts(i)));
            slots ??= new double[session.ExpertSlots.Length];
            for (var l = 0; l < slots.Length; l++) slots[l] += session.ExpertSlots[l];
            fed += window.Length;
        }
        return new HeldOutDetail(predicted == 0 ? null : nll / predicted, [.. (slots ?? []).Select(s => s / Math.Max(1, fed))], [.. tokenLoss],
            perToken ? [.. tokenExperts] : []);
    }

    /// <summary>
    /// Exact-match accuracy per bAbI task of <paramref name="router"/> (null: the checkpoint's own), or of self-contrast
    /// decoding with that router as the strong pass when <paramref name="contrast"/> is given. Each story is fed once,
    /// teacher-forced (earlier questions with their gold answers stay in the context, as in training), and a question
    /// counts when the greedy choice at each of its answer positions is the gold token. A story longer than
    /// <paramref name="context"/> is evaluated question by question on the last <paramref name="context"/> tokens.
    /// </summary>
    public async Task<Dictionary<string, double>> BabiAsync(string? router, IReadOnlyList<BabiItem> items, int context, SelfContrastDecoding? contrast = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(items);
        var correct = new Dictionary<string, (int Right, int All)>(StringComparer.Ordinal);
        async Task<float[][]> Logits(string? r, int[] tokens)
        {
            using var session = DecoderSession.InProcess(plugins, checkpointPath, services, "babi", r);
            return await session.AppendAllAsync([.. tokens.Select(t => (long)t)], cancellationToken);
        }
        async Task<Func<int, int>> Predictor(int[] tokens)
        {
            var strong = await Logits(router, tokens);
            if (contrast is null)
            {
                return i => TokenSampler.ArgMax(strong[i]);
            }
            var weak = await Logits(contrast.WeakRouter, tokens);
            return i => TokenSampler.ArgMax(contrast.Combine(strong[i], weak[i]));
        }
        foreach (var item in items)
        {
            (int Right, int All) score = correct.TryGetValue(item.Task, out var c) ? c : (0, 0);
            if (item.Tokens.Length <= context)
            {
                var predict = await Predictor(item.Tokens);
                foreach (var (pos, answer) in item.Questions)
                {
                    score = (score.Right + (answer.Select((a, j) => predict(pos + j) == a).All(x => x) ? 1 : 0), score.All + 1);
                }
            }
            else
            {
                foreach (var (pos, answer) in item.Questions)
                {
                    var end = pos + answer.Length; // the window holds the question and the answer's tokens but the last
                    var start = Math.Max(0, end - context);
                    var predict = await Predictor(item.Tokens[start..end]);
                    score = (score.Right + (answer.Select((a, j) => predict(pos - start + j) == a).All(x => x) ? 1 : 0), score.All + 1);
                }
            }
            correct[item.Task] = score;
        }
        return correct.ToDictionary(p => p.Key, p => p.Value.All == 0 ? 0 : (double)p.Value.Right / p.Value.All, StringComparer.Ordinal);
    }

    /// <summary>
    /// Easy and hard positions by a reference model's per-token loss: easy at or below the <paramref name="quantile"/>
    /// quantile, hard at or above the 1 − <paramref name="quantile"/> quantile.
    /// </summary>
    public static (bool[] Easy, bool[] Hard) Difficulty(float[] referenceLoss, double quantile = 0.25)
    {
        ArgumentNullException.ThrowIfNull(referenceLoss);
        if (referenceLoss.Length == 0) return ([], []);
        var sorted = referenceLoss.Order().ToArray();
        var low = sorted[(int)Math.Floor(quantile * (sorted.Length - 1))];
        var high = sorted[(int)Math.Ceiling((1 - quantile) * (sorted.Length - 1))];
        return ([.. referenceLoss.Select(l => l <= low)], [.. referenceLoss.Select(l => l >= high)]);
    }

    /// <summary>Mean of <paramref name="experts"/> / <paramref name="layers"/> over the selected positions; null when none or unknown.</summary>
    public static double? MeanWhere(int[] experts, bool[] selected, int layers)
    {
        if (experts.Length == 0 || experts.Length != selected.Length || layers < 1) return null;
        var chosen = experts.Where((_, i) => selected[i]).ToArray();
        return chosen.Length == 0 ? null : chosen.Average() / layers;
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

    /// <summary>The streamed tokens per second of a generation (the events of <see cref="GenerationStreams.GenerateAsync"/>, say).</summary>
    public static async Task<double> StreamSpeedAsync(IAsyncEnumerable<GenerationEvent> events, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(events);
        var sw = Stopwatch.StartNew();
        var n = 0;
        await foreach (var e in events.WithCancellation(cancellationToken))
        {
            if (e.IsEnd)
            {
                if (e.Finish == FinishReason.Error) throw new InvalidOperationException($"The generation failed: {e.Error}");
                break;
            }
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
