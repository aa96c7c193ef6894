using MoeGrains.Contracts;
using static TorchSharp.torch;

namespace MoeGrains.Dispatch;

/// <summary>
/// Continuous batching of MoE layer requests on a silo. A request to a layer that has no pass in flight runs at once,
/// alone (no added latency when the cluster is quiet). Requests that arrive while a pass is in flight wait, and when it
/// ends all of them (up to a token limit) run as one pass: one routing call and one message per expert for the lot,
/// instead of one per request. Each caller gets its own rows. Only requests that agree on everything but their rows
/// are merged (router, k_min, deadline, masked experts, dtype, width); a request with non-finite values runs alone, and
/// if a merged pass fails, each of its requests runs again alone, so a bad request or a lost quorum fails that request only.
/// </summary>
public sealed class LayerRequestCoalescer
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Queue> _queues = new();

    /// <summary>A layer pass: the grain's own forward for one request (validation included).</summary>
    public delegate Task<MoeLayerResult> LayerPass(MoeLayerRequest request, CancellationToken cancellationToken);

    private sealed class Queue(string key)
    {
        public readonly string Key = key;
        public readonly object Gate = new();
        public bool Busy;

        /// <summary>Idle and taken out of the dictionary: a caller that still holds it fetches a new one.</summary>
        public bool Retired;

        public readonly List<Waiting> Waiting = [];
    }

    /// <summary>Merge keys with a pass in flight or requests waiting (an idle key's queue is removed).</summary>
    public int ActiveKeys => _queues.Count;

    private sealed record Waiting(MoeLayerRequest Request, CancellationToken CancellationToken)
    {
        public TaskCompletionSource<MoeLayerResult> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    /// <summary>Runs <paramref name="request"/> through <paramref name="pass"/>, merged with concurrent requests of the same layer.</summary>
    /// <param name="lane">Where tensor work (concatenating, splitting rows) runs: the silo's device lane.</param>
    public async Task<MoeLayerResult> RunAsync(string layer, MoeLayerRequest request, LayerPass pass, int maxTokens, IComputeLane lane, CancellationToken cancellationToken)
    {
        var key = MergeKey(layer, request);
        if (key is null || maxTokens <= 0)
        {
            return await pass(request, cancellationToken).ConfigureAwait(true);
        }
        Queue queue;
        Waiting? mine = null;
        while (true)
        {
            queue = _queues.GetOrAdd(key, k => new Queue(k));
            lock (queue.Gate)
            {
                if (queue.Retired)
                {
                    continue;
                }
                if (queue.Busy)
                {
                    mine = new Waiting(request, cancellationToken);
                    queue.Waiting.Add(mine);
                }
                else
                {
                    queue.Busy = true;
                }
                break;
            }
        }
        if (mine is not null)
        {
            return await mine.Done.Task.WaitAsync(cancellationToken).ConfigureAwait(true);
        }
        try
        {
            return await pass(request, cancellationToken).ConfigureAwait(true);
        }
        finally
        {
            // Serve what queued meanwhile, in this activation's context, without holding up this caller's answer.
            _ = ServeWaitingAsync(queue, pass, maxTokens, lane);
        }
    }

    private async Task ServeWaitingAsync(Queue queue, LayerPass pass, int maxTokens, IComputeLane lane)
    {
        while (true)
        {
            List<Waiting> batch = [];
            lock (queue.Gate)
            {
                long tokens = 0;
                var taken = 0;
                foreach (var w in queue.Waiting)
                {
                    var rows = w.Request.Hidden.Shape.Count > 0 ? w.Request.Hidden.Shape[0] : 0;
                    if (batch.Count > 0 && tokens + rows > maxTokens) break;
                    taken++;
                    if (w.CancellationToken.IsCancellationRequested)
                    {
                        w.Done.TrySetCanceled(w.CancellationToken);
                        continue;
                    }
                    tokens += rows;
                    batch.Add(w);
                }
                queue.Waiting.RemoveRange(0, taken);
                if (taken == 0)
                {
                    // Idle: the key's queue goes (keys carry deadlines and masked experts, so a silo meets many over time).
                    queue.Busy = false;
                    queue.Retired = true;
                    _queues.TryRemove(new KeyValuePair<string, Queue>(queue.Key, queue));
                    return;
                }
            }
            if (batch.Count == 0)
            {
                continue;
            }
            await ServeAsync(batch, pass, lane).ConfigureAwait(true);
        }
    }

    private static async Task ServeAsync(List<Waiting> batch, LayerPass pass, IComputeLane lane)
    {
        if (batch.Count == 1)
        {
            await Complete(batch[0], pass).ConfigureAwait(true);
            return;
        }
        MoeLayerResult merged;
        try
        {
            // One step on the lane converts each request once: requests with non-finite values (which would fail the
            // shared pass) are set apart to run alone, the rest are concatenated.
            var (finite, hidden) = await lane.RunAsync(() =>
            {
                using var scope = NewDisposeScope();
                var rows = batch.Select(w => w.Request.Hidden.ToTensor(CPU)).ToArray();
                var ok = rows.Select(r => r.isfinite().all().item<bool>()).ToArray();
                var kept = rows.Where((_, i) => ok[i]).ToArray();
                return (ok, kept.Length > 1 ? WireTensor.FromTensor(cat(kept, 0), batch[0].Request.Hidden.DType) : null);
            }).ConfigureAwait(true);
            var alone = batch.Where((_, i) => !finite[i]).ToList();
            batch = batch.Where((_, i) => finite[i]).ToList();
            _ = Task.WhenAll(alone.Select(w => Complete(w, pass)));
            if (hidden is null)
            {
                await Task.WhenAll(batch.Select(w => Complete(w, pass))).ConfigureAwait(true);
                return;
            }
            var first = batch[0].Request;
            var tokenIds = first.TokenIds is null ? null : batch.SelectMany(w => w.Request.TokenIds ?? []).ToArray();
            var vocabulary = first.Vocabulary is null ? null : batch.SelectMany(w => w.Request.Vocabulary ?? []).ToArray();
            merged = await pass(first with { Hidden = hidden, TokenIds = tokenIds, Vocabulary = vocabulary }, CancellationToken.None).ConfigureAwait(true);
        }
        catch (Exception)
        {
            // A merged pass failed (a lost quorum, a deadline): each runs again alone and gets its own answer.
            await Task.WhenAll(batch.Select(w => Complete(w, pass))).ConfigureAwait(true);
            return;
        }
        var outputs = await lane.RunAsync(() =>
        {
            using var scope = NewDisposeScope();
            var all = merged.Output.ToTensor(CPU);
            var parts = new WireTensor[batch.Count];
            long offset = 0;
            for (var i = 0; i < batch.Count; i++)
            {
                var rows = batch[i].Request.Hidden.Shape[0];
                parts[i] = WireTensor.FromTensor(all.narrow(0, offset, rows), merged.Output.DType);
                offset += rows;
            }
            return parts;
        }).ConfigureAwait(true);
        for (var i = 0; i < batch.Count; i++)
        {
            batch[i].Done.TrySetResult(merged with { Output = outputs[i], MergedRequests = batch.Count });
        }
    }

    private static async Task Complete(Waiting w, LayerPass pass)
    {
        try
        {
            w.Done.TrySetResult(await pass(w.Request, w.CancellationToken).ConfigureAwait(true));
        }
        catch (OperationCanceledException e)
        {
            w.Done.TrySetCanceled(e.CancellationToken);
        }
        catch (Exception e)
        {
            w.Done.TrySetException(e);
        }
    }

    /// <summary>What must agree for two requests to share a pass; null when a request is never merged.</summary>
    private static string? MergeKey(string layer, MoeLayerRequest r) =>
        r.Hidden.DType is TensorDType.Float32 or TensorDType.Float16 or TensorDType.BFloat16 && r.Hidden.Shape.Count == 2
            ? $"{layer}|{r.Router}|{r.KMin}|{r.ExpertTimeoutMs}|{(r.MaskedExperts is null ? "" : string.Join(',', r.MaskedExperts))}|{r.Hidden.DType}|{r.Hidden.Shape[1]}|{r.TokenIds is not null}|{r.Vocabulary is not null}"
            : null;
}
