using MoeGrains.Generation;
using System.Diagnostics;
using System.Globalization;
using MoeGrains.Checkpoints;
using static TorchSharp.torch;

namespace MoeGrains.Training;

/// <summary>The loss of a batch (inputs, targets <c>[batch, tokens]</c>): the total to minimise, its language-model
/// part (mean nats per token) and any auxiliary part (such as load balancing).</summary>
public delegate (Tensor Total, Tensor LanguageModel, Tensor Auxiliary) CausalLmLossFunction(Tensor inputs, Tensor targets);

/// <summary>
/// Trains any causal language model module on a <see cref="TokenCorpus"/> with <see cref="AdamW"/>, warm-up and cosine
/// decay, gradient clipping, periodic held-out evaluation and checkpoints; resumes from the checkpoint folder's training
/// state (weights, optimizer moments, step) onto the same batches. Runs on the calling thread, which must not hold a
/// dispose scope.
/// </summary>
public sealed class CausalLmTrainer(nn.Module model, CausalLmLossFunction loss, TokenCorpus corpus, CausalLmTrainingOptions options)
{
    private const int EvalBatch = 16;

    /// <summary>
    /// Trains, writing checkpoints to <paramref name="folder"/> (<paramref name="configJson"/> and <paramref name="metadata"/>
    /// go with the weights). With <paramref name="resume"/>, continues from the training state found there.
    /// </summary>
    public TrainingSummary Run(string folder, string configJson, IReadOnlyDictionary<string, string> metadata, bool resume,
        Action<TrainingEvent>? onEvent = null, CancellationToken cancellationToken = default)
    {
        if (options.Validate() is { } error)
        {
            throw new ArgumentException($"Invalid training options: {error}.");
        }
        var parameters = model.named_parameters().Select(p => (p.name, p.parameter)).ToList();
        using var optimizer = new AdamW(parameters, options.Beta1, options.Beta2, weightDecay: options.WeightDecay);
        var schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.MinLearningRateRatio);
        long step = 0;
        var previous = TimeSpan.Zero;
        if (resume && File.Exists(Path.Combine(folder, LanguageModelCheckpoint.TrainingStateFile)))
        {
            (step, previous) = Restore(folder, optimizer);
            onEvent?.Invoke(new TrainingResumed(step, previous));
        }

        var clock = Stopwatch.StartNew();
        TimeSpan Elapsed() => previous + clock.Elapsed;
        var tokensPerStep = (long)options.BatchSize * options.BlockSize;
        var window = new List<(double Total, double Lm, double Aux)>();
        var windowClock = Stopwatch.StartNew();
        var trainTime = TimeSpan.Zero;
        double lastLoss = double.NaN;
        var byBudget = false;
        long stepsThisRun = 0;
        model.train();
        while (step < options.Steps)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (options.TimeBudget is { } budget && Elapsed() >= budget)
            {
                byBudget = true;
                break;
            }
            var progress = Math.Max((double)step / options.Steps, options.TimeBudget is { } b ? Elapsed() / b : 0);
            var lr = schedule.At(step, progress);
            var stepClock = Stopwatch.StartNew();
            using (var scope = NewDisposeScope())
            {
                var (x, y) = corpus.TrainingBatch(step, options.BatchSize, options.BlockSize, options.Seed);
                var (total, lm, aux) = loss(x, y);
                total.backward();
                if (options.GradientClip > 0)
                {
                    nn.utils.clip_grad_norm_(parameters.Select(p => p.parameter), options.GradientClip);
                }
                optimizer.Step(lr);
                model.zero_grad();
                window.Add((total.item<float>(), lm.item<float>(), aux.item<float>()));
            }
            trainTime += stepClock.Elapsed;
            step++;
            stepsThisRun++;
            if (step % options.LogEvery == 0 || step == options.Steps)
            {
                var seconds = windowClock.Elapsed.TotalSeconds;
                var perStep = seconds / window.Count;
                var remainingSteps = TimeSpan.FromSeconds(perStep * (options.Steps - step));
                var remaining = options.TimeBudget is { } tb && tb - Elapsed() < remainingSteps ? tb - Elapsed() : remainingSteps;
                lastLoss = window.Average(w => w.Lm);
                onEvent?.Invoke(new TrainingProgress(step, options.Steps, window.Average(w => w.Total), lastLoss, window.Average(w => w.Aux), lr,
                    window.Count * tokensPerStep / seconds, Elapsed(), remaining < TimeSpan.Zero ? TimeSpan.Zero : remaining));
                window.Clear();
                windowClock.Restart();
            }
            if (options.EvalEvery > 0 && step % options.EvalEvery == 0 && step < options.Steps)
            {
                var (l, n) = Evaluate(options.EvalWindows);
                onEvent?.Invoke(new HeldOutEvaluation(step, l, n, false, Elapsed()));
                model.train();
                windowClock.Restart();
            }
            if (options.CheckpointEvery > 0 && step % options.CheckpointEvery == 0 && step < options.Steps)
            {
                Save(folder, configJson, metadata, optimizer, step, Elapsed());
                onEvent?.Invoke(new CheckpointWritten(step, folder));
                windowClock.Restart();
            }
        }
        var trainingTime = Elapsed();
        Save(folder, configJson, metadata, optimizer, step, trainingTime);
        onEvent?.Invoke(new CheckpointWritten(step, folder));
        var (heldOut, heldOutTokens) = Evaluate(options.FinalFullEvaluation ? null : options.EvalWindows);
        onEvent?.Invoke(new HeldOutEvaluation(step, heldOut, heldOutTokens, options.FinalFullEvaluation, Elapsed()));
        var speed = trainTime.TotalSeconds > 0 ? stepsThisRun * tokensPerStep / trainTime.TotalSeconds : 0;
        return new TrainingSummary(step, step * tokensPerStep, trainingTime, Elapsed(), speed, lastLoss, heldOut, heldOutTokens, byBudget);
    }

    /// <summary>Mean language-model loss over held-out windows (all of them when <paramref name="maxWindows"/> is null).</summary>
    public (double Loss, long Tokens) Evaluate(int? maxWindows)
    {
        var offsets = TokenCorpus.EvaluationOffsets(corpus.HeldOut.Length, options.BlockSize, maxWindows);
        if (offsets.Length == 0)
        {
            return (double.NaN, 0);
        }
        model.eval();
        using var _ = no_grad();
        double sum = 0;
        long tokens = 0;
        foreach (var chunk in offsets.Chunk(EvalBatch))
        {
            using var scope = NewDisposeScope();
            var (x, y) = TokenCorpus.Windows(corpus.HeldOut, chunk, options.BlockSize, corpus.HeldOutMask);
            var n = corpus.HeldOutMask is null ? (long)chunk.Length * options.BlockSize : y.ne(TokenCorpus.IgnoredTarget).sum().item<long>();
            if (n == 0)
            {
                continue; // no target in these windows (a loss mask)
            }
            var (_, lm, _) = loss(x, y);
            sum += lm.item<float>() * n;
            tokens += n;
        }
        return tokens == 0 ? (double.NaN, 0) : (sum / tokens, tokens);
    }

    private void Save(string folder, string configJson, IReadOnlyDictionary<string, string> metadata, AdamW optimizer, long step, TimeSpan elapsed)
    {
        var weights = model.named_parameters().Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter)).ToList();
        LanguageModelCheckpoint.Save(folder, weights, configJson, metadata);
        SafeTensorsFile.Write(Path.Combine(folder, LanguageModelCheckpoint.TrainingStateFile), optimizer.StateDict(), new Dictionary<string, string>
        {
            ["step"] = step.ToString(CultureInfo.InvariantCulture),
            ["optimizer_steps"] = optimizer.Steps.ToString(CultureInfo.InvariantCulture),
            ["elapsed_ms"] = ((long)elapsed.TotalMilliseconds).ToString(CultureInfo.InvariantCulture),
            ["seed"] = options.Seed.ToString(CultureInfo.InvariantCulture),
        });
    }

    private (long Step, TimeSpan Elapsed) Restore(string folder, AdamW optimizer)
    {
        var (weightsFile, _) = LanguageModelCheckpoint.Open(folder);
        var stateFile = SafeTensorsFile.Open(Path.Combine(folder, LanguageModelCheckpoint.TrainingStateFile));
        long Meta(string key) => stateFile.Metadata.TryGetValue(key, out var v) && long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var x)
            ? x : throw new InvalidDataException($"The training state in '{folder}' has no '{key}'.");
        if (Meta("seed") != options.Seed)
        {
            throw new InvalidOperationException($"The training state in '{folder}' was made with seed {Meta("seed")}, not {options.Seed}: resume with the same seed.");
        }
        var weights = LanguageModelCheckpoint.LoadAll(weightsFile);
        var state = LanguageModelCheckpoint.LoadAll(stateFile);
        try
        {
            using (no_grad())
            {
                foreach (var (name, p) in model.named_parameters())
                {
                    if (!weights.TryGetValue(name, out var w) || !w.shape.SequenceEqual(p.shape))
                    {
                        throw new InvalidDataException($"The checkpoint in '{folder}' has no tensor '{name}' of shape [{string.Join(", ", p.shape)}]: it was made for other sizes.");
                    }
                    p.copy_(w);
                }
            }
            optimizer.Load(state, Meta("optimizer_steps"));
        }
        finally
        {
            foreach (var t in weights.Values.Concat(state.Values)) t.Dispose();
        }
        return (Meta("step"), TimeSpan.FromMilliseconds(Meta("elapsed_ms")));
    }
}
