using System.Diagnostics;
using MoeGrains.Contracts;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Dispatch;

/// <summary>What one expert call returned: its output rows (in the group's token order) and where it ran.</summary>
public sealed record ExpertAnswer(Tensor Output, string Silo, double ComputeMs, long CrossSiloBytes);

/// <summary>Calls one expert with one batch. The in-process and the grain dispatcher each provide one.</summary>
public delegate Task<ExpertAnswer> ExpertCallAsync(int expert, Tensor batch, CancellationToken cancellationToken);

/// <summary>Calls one replica of an expert (0: the expert itself) with one batch: the dispatch with hot-expert replication.</summary>
public delegate Task<ExpertAnswer> ExpertReplicaCallAsync(int expert, int replica, Tensor batch, CancellationToken cancellationToken);

/// <summary>Where synchronous tensor work runs: inline for the in-process dispatcher, the device thread in a silo.</summary>
public interface IComputeLane
{
    Task<T> RunAsync<T>(Func<T> compute, CancellationToken cancellationToken = default);
}

/// <summary>Runs tensor work on the calling thread.</summary>
public sealed class InlineLane : IComputeLane
{
    public static readonly InlineLane Instance = new();

    public Task<T> RunAsync<T>(Func<T> compute, CancellationToken cancellationToken = default) => Task.FromResult(compute());
}

/// <summary>The result of one layer step.</summary>
public sealed record MoeLayerOutput(Tensor Output, ExpertCall[] Calls, long CrossSiloBytes, int[] FailedExperts) : IDisposable
{
    public void Dispose() => Output.Dispose();
}

/// <summary>
/// The mixture-of-experts layer step shared by every dispatcher: group tokens by expert, call each chosen expert once
/// (concurrently, each with a deadline), mask the experts that failed or were late, renormalise the survivors' weights
/// (when at least <c>kMin</c> of each token's experts answered, else <see cref="ExpertQuorumException"/>), and combine.
/// </summary>
public static class MoeLayerRunner
{
    // No ConfigureAwait(false): in a grain the expert calls must run in the activation's context.
    public static Task<MoeLayerOutput> RunAsync(
        Tensor hidden, RoutingResult routing, int numExperts, int outputDim, ExpertCallAsync call,
        int kMin, TimeSpan expertTimeout, CancellationToken cancellationToken = default, IComputeLane? lane = null)
    {
        ArgumentNullException.ThrowIfNull(call);
        return RunAsync(hidden, routing, numExperts, outputDim, (e, _, batch, ct) => call(e, batch, ct), null, 0, kMin, expertTimeout, cancellationToken, lane);
    }

    /// <summary>
    /// The layer step with hot-expert replication: an expert with <c>replicas[e] &gt; 1</c> has its tokens split over its
    /// replicas (<see cref="ExpertGroup.SplitOverReplicas"/>), one call each; a replica that fails fails its expert (all its
    /// tokens are masked, as without replication), so the output never depends on which replica ran a token.
    /// </summary>
    public static async Task<MoeLayerOutput> RunAsync(
        Tensor hidden, RoutingResult routing, int numExperts, int outputDim, ExpertReplicaCallAsync call, IReadOnlyList<int>? replicas, int rotation,
        int kMin, TimeSpan expertTimeout, CancellationToken cancellationToken = default, IComputeLane? lane = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kMin);
        ArgumentNullException.ThrowIfNull(call);
        lane ??= InlineLane.Instance;
        var tokens = routing.Tokens;
        var groups = ExpertGroup.SplitOverReplicas(ExpertGroup.FromRouting(routing.Experts, routing.Weights, tokens, routing.K, numExperts), replicas, rotation);
        var calls = new Task<(ExpertAnswer? Answer, string? Error, double Ms)>[groups.Length];
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(expertTimeout);
        var batches = await lane.RunAsync(() => groups.Select(g =>
        {
            using var idx = tensor(g.Tokens, device: hidden.device);
            return hidden.index_select(0, idx);
        }).ToArray(), cancellationToken);
        try
        {
            for (var i = 0; i < groups.Length; i++)
            {
                calls[i] = Guard(call, groups[i].Expert, groups[i].Replica, batches[i], expertTimeout, deadline.Token);
            }
            await Task.WhenAll(calls);
        }
        finally
        {
            foreach (var b in batches)
            {
                b.Dispose();
            }
        }
        cancellationToken.ThrowIfCancellationRequested();

        var failed = new HashSet<int>();
        var records = new ExpertCall[groups.Length];
        long crossBytes = 0;
        for (var i = 0; i < groups.Length; i++)
        {
            var (answer, error, ms) = calls[i].Result;
            if (answer is null)
            {
                failed.Add(groups[i].Expert);
            }
            crossBytes += answer?.CrossSiloBytes ?? 0;
            records[i] = new ExpertCall(groups[i].Expert, groups[i].Tokens.Length, answer?.Silo ?? "", answer?.ComputeMs ?? 0, ms, error) { Replica = groups[i].Replica };
        }
        try
        {
            var output = await lane.RunAsync(() => Combine(hidden, routing, groups, calls, failed, outputDim, kMin), CancellationToken.None);
            return new MoeLayerOutput(output, records, crossBytes, [.. failed.Order()]);
        }
        finally
        {
            foreach (var c in calls)
            {
                c.Result.Answer?.Output.Dispose();
            }
        }
    }

    private static async Task<(ExpertAnswer? Answer, string? Error, double Ms)> Guard(
        ExpertReplicaCallAsync call, int expert, int replica, Tensor batch, TimeSpan timeout, CancellationToken token)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            var answer = await call(expert, replica, batch, token).WaitAsync(timeout, token);
            return (answer, null, sw.Elapsed.TotalMilliseconds);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            return (null, $"expert {expert} did not answer within {timeout.TotalMilliseconds:F0} ms", sw.Elapsed.TotalMilliseconds);
        }
        catch (Exception e)
        {
            return (null, $"expert {expert} failed: {e.GetType().Name}: {e.Message}", sw.Elapsed.TotalMilliseconds);
        }
    }

    private static Tensor Combine(
        Tensor hidden, RoutingResult routing, ExpertGroup[] groups, Task<(ExpertAnswer? Answer, string? Error, double Ms)>[] calls,
        HashSet<int> failed, int outputDim, int kMin)
    {
        var tokens = routing.Tokens;
        var k = routing.K;
        float[]? scale = null;
        if (failed.Count > 0)
        {
            // Renormalise each token's weights over the experts that answered; check the quorum first.
            scale = new float[tokens];
            var bad = new List<int>();
            for (var t = 0; t < tokens; t++)
            {
                int chosen = 0, answered = 0;
                float total = 0, kept = 0;
                for (var j = 0; j < k; j++)
                {
                    var e = routing.Experts[t * k + j];
                    if (e < 0) continue;
                    chosen++;
                    total += routing.Weights[t * k + j];
                    if (!failed.Contains(e))
                    {
                        answered++;
                        kept += routing.Weights[t * k + j];
                    }
                }
                if (answered < Math.Min(kMin, chosen))
                {
                    bad.Add(t);
                }
                scale[t] = kept > 0 ? total / kept : 0f;
            }
            if (bad.Count > 0)
            {
                throw new ExpertQuorumException(
                    $"{bad.Count} token(s) got fewer than k_min = {kMin} answers; failed experts: {string.Join(", ", failed.Order())} " +
                    $"({string.Join("; ", calls.Select(c => c.Result.Error).Where(e => e is not null).Take(3))}).",
                    [.. failed.Order()]);
            }
        }
        using var scope = NewDisposeScope();
        var output = zeros(new long[] { tokens, outputDim }, dtype: ScalarType.Float32, device: hidden.device);
        for (var i = 0; i < groups.Length; i++)
        {
            var answer = calls[i].Result.Answer;
            var g = groups[i];
            if (answer is null || failed.Contains(g.Expert))
            {
                continue; // a failed expert (any of its replicas failed) contributes nothing; its weight went to the others
            }
            var w = g.Weights;
            if (scale is not null)
            {
                w = new float[w.Length];
                for (var r = 0; r < w.Length; r++)
                {
                    w[r] = g.Weights[r] * scale[g.Tokens[r]];
                }
            }
            var y = answer.Output.to_type(ScalarType.Float32);
            if (y.shape.Length != 2 || y.shape[0] != g.Tokens.Length || y.shape[1] != outputDim)
            {
                throw new ExpertFailedException(
                    $"Expert {g.Expert} returned shape [{string.Join(", ", y.shape)}], expected [{g.Tokens.Length}, {outputDim}].");
            }
            var weighted = y.mul(tensor(w, new long[] { w.Length, 1 }, device: hidden.device));
            output.index_add_(0, tensor(g.Tokens, device: hidden.device), weighted, Scalars.One); // a scalar that outlives the call (see Scalars)
        }
        return output.MoveToOuterDisposeScope();
    }
}
