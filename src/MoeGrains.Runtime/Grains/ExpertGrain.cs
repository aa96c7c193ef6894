using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Diagnostics;
using MoeGrains.Hosting;
using MoeGrains.Dispatch;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using Orleans.Concurrency;
using static TorchSharp.torch;

namespace MoeGrains.Grains;

/// <summary>
/// Hosts one expert plugin on this silo's device. The plugin and its weights are created on the first call (and after a
/// failure, on the next one, so a repaired checkpoint is picked up without a restart); a bad checkpoint or a plugin that
/// throws fails this expert only, with a typed error. With a device budget (<c>MoeGrains:Offload</c>) the grain holds no
/// weights: each computation borrows its expert from the silo's <see cref="Offload.SiloExpertCache"/>, which loads it from
/// the expert weight store when it is not resident and evicts others under the budget.
/// </summary>
/// <remarks>
/// Reentrant, so that it can count what waits for it and refuse beyond <see cref="MoeGrainsOptions.MaxQueuedPerExpert"/>
/// at once; the computations themselves are serialised on the device lane's thread.
/// </remarks>
[ExpertPlacement]
[Reentrant]
internal sealed partial class ExpertGrain(
    ModelCatalog models, PluginCatalog plugins, SiloDevice device, IServiceProvider services,
    IOptions<TensorWireOptions> wire, IOptions<MoeGrainsOptions> options, Offload.SiloExpertCache offload, ILogger<ExpertGrain> logger,
    ExpertTokenCounts? tokenCounts = null) : Grain, IExpertGrain
{
    private IExpert? _expert;
    private ModelSpec? _spec;
    private int _pending;

    private IExpert Ensure(string key)
    {
        if (_expert is not null)
        {
            return _expert;
        }
        var (model, layer, index) = ExpertKey.ParseExpert(key);
        var spec = models.Check(model, layer, index);
        var sw = Stopwatch.StartNew();
        try
        {
            _expert = PluginFactory.CreateExpert(plugins, spec, models.File(model), layer, index, device.Device, services);
        }
        catch (MoeGrainsException)
        {
            throw;
        }
        catch (Exception e)
        {
            throw new ExpertFailedException($"Expert '{key}' could not be loaded: {e.Message}");
        }
        _spec = spec;
        LogLoaded(logger, key, spec.ExpertPlugin, device.Name, sw.Elapsed.TotalMilliseconds);
        return _expert;
    }

    public async Task<ExpertResult> Forward(WireTensor hidden, CancellationToken cancellationToken)
    {
        var limit = options.Value.MaxQueuedPerExpert;
        if (++_pending > limit)
        {
            _pending--;
            throw new OverloadedException($"Expert '{this.GetPrimaryKeyString()}' already holds {limit} requests; request refused.", limit);
        }
        try
        {
            var key = this.GetPrimaryKeyString();
            var here = RuntimeIdentity;
            if (options.Value.MaxBatchTokens <= 0)
            {
                return await device.Lane.RunAsync(() => Compute(key, here, [new PendingCall(hidden, cancellationToken)])[0]!, cancellationToken);
            }
            // Continuous batching: queue the call; if no computation of this expert is queued on the device lane, queue
            // one. When the lane runs it, it takes every call waiting at that moment (calls that came while the previous
            // batch ran included) and serves them with one forward pass.
            var call = new PendingCall(hidden, cancellationToken);
            _waiting.Enqueue(call);
            if (Interlocked.CompareExchange(ref _batchQueued, 1, 0) == 0)
            {
                _ = device.Lane.RunAsync(() => RunBatch(key, here), CancellationToken.None);
            }
            return await call.Done.Task.WaitAsync(cancellationToken);
        }
        finally
        {
            _pending--;
        }
    }

    private readonly System.Collections.Concurrent.ConcurrentQueue<PendingCall> _waiting = new();
    private int _batchQueued;

    private sealed class PendingCall(WireTensor hidden, CancellationToken cancellationToken)
    {
        public WireTensor Hidden { get; } = hidden;
        public CancellationToken CancellationToken { get; } = cancellationToken;
        public TaskCompletionSource<ExpertResult> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    // Runs on the device lane's thread: takes the waiting calls (up to MaxBatchTokens tokens; the rest get a new job).
    private bool RunBatch(string key, string silo)
    {
        Volatile.Write(ref _batchQueued, 0);
        var batch = new List<PendingCall>();
        long tokens = 0;
        var max = options.Value.MaxBatchTokens;
        while (_waiting.TryPeek(out var next) && (batch.Count == 0 || tokens + TokensOf(next) <= max) && _waiting.TryDequeue(out next))
        {
            if (next.CancellationToken.IsCancellationRequested)
            {
                next.Done.TrySetCanceled(next.CancellationToken);
                continue;
            }
            tokens += TokensOf(next);
            batch.Add(next);
        }
        if (!_waiting.IsEmpty && Interlocked.CompareExchange(ref _batchQueued, 1, 0) == 0)
        {
            _ = device.Lane.RunAsync(() => RunBatch(key, silo), CancellationToken.None);
        }
        if (batch.Count == 0)
        {
            return true;
        }
        try
        {
            var results = Compute(key, silo, batch);
            for (var i = 0; i < batch.Count; i++)
            {
                if (results[i] is { } r) batch[i].Done.TrySetResult(r);
            }
        }
        catch (Exception e)
        {
            foreach (var c in batch) c.Done.TrySetException(e);
        }
        return true;
    }

    private static long TokensOf(PendingCall call) => call.Hidden.Shape.Count > 0 ? call.Hidden.Shape[0] : 0;

    // Runs on the device lane's thread: only the arguments and this grain's plugin fields are touched here. Each call's
    // input is checked on its own (a bad one fails that call alone); the valid ones of a dtype share one forward pass,
    // and each output slice is checked on its own. Returns a result per call, null where the call already failed.
    private ExpertResult?[] Compute(string key, string silo, IReadOnlyList<PendingCall> calls)
    {
        using var lease = offload.Enabled ? offload.Acquire(key, CancellationToken.None) : null;
        var expert = lease?.Expert ?? Ensure(key);
        var spec = lease?.Spec ?? _spec!;
        var results = new ExpertResult?[calls.Count];
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var inputs = new Tensor?[calls.Count];
        for (var i = 0; i < calls.Count; i++)
        {
            var hidden = calls[i].Hidden;
            if (hidden.Shape.Count != 2 || hidden.Shape[1] != spec.DModel)
            {
                Fail(calls[i], new TensorValidationException(
                    $"Expert '{key}' expects hidden states [tokens, {spec.DModel}], got [{string.Join(", ", hidden.Shape)}]."));
                continue;
            }
            var x = hidden.ToTensor(device.Device);
            if (!TensorChecks.AllFinite(x))
            {
                Fail(calls[i], new TensorValidationException($"Expert '{key}' received non-finite values (NaN or Inf)."));
                continue;
            }
            inputs[i] = x;
        }
        foreach (var group in Enumerable.Range(0, calls.Count).Where(i => inputs[i] is not null).GroupBy(i => inputs[i]!.dtype))
        {
            var members = group.ToArray();
            var sw = Stopwatch.StartNew();
            Tensor y;
            try
            {
                y = expert.Forward(members.Length == 1 ? inputs[members[0]]! : cat(members.Select(i => inputs[i]!).ToArray(), 0));
            }
            catch (Exception e) when (e is not MoeGrainsException)
            {
                throw new ExpertFailedException($"Expert '{key}' failed: {e.Message}");
            }
            var ms = sw.Elapsed.TotalMilliseconds;
            long offset = 0;
            foreach (var i in members)
            {
                var hidden = calls[i].Hidden;
                var rows = y.narrow(0, offset, hidden.Shape[0]);
                offset += hidden.Shape[0];
                if (!TensorChecks.AllFinite(rows))
                {
                    Fail(calls[i], new ExpertFailedException($"Expert '{key}' produced non-finite values (NaN or Inf)."));
                    continue;
                }
                try
                {
                    var output = WireTensor.FromTensor(rows, hidden.DType == TensorDType.Int8 ? TensorDType.Float32 : hidden.DType, wire.Value.MaxTensorBytes);
                    results[i] = new ExpertResult(output, silo, ms);
                }
                catch (MoeGrainsException e)
                {
                    Fail(calls[i], e);
                }
            }
            MoeGrainsMetrics.ExpertTokens.Add(offset);
            tokenCounts?.Add(key, offset);
            MoeGrainsMetrics.ExpertComputeMs.Record(ms);
            MoeGrainsMetrics.ExpertBatchCalls.Record(members.Length);
        }
        return results;

        void Fail(PendingCall call, Exception e)
        {
            if (options.Value.MaxBatchTokens <= 0 && calls.Count == 1)
            {
                throw e;
            }
            call.Done.TrySetException(e);
        }
    }

    public Task<ExpertInfo> Describe()
    {
        var key = this.GetPrimaryKeyString();
        var silo = RuntimeIdentity;
        return device.Lane.RunAsync(() =>
        {
            using var lease = offload.Enabled ? offload.Acquire(key) : null;
            var d = (lease?.Expert ?? Ensure(key)).Descriptor;
            return new ExpertInfo(key, d.Name, silo, device.Name, d.InputDim, d.OutputDim, d.ParameterBytes, d.DType);
        });
    }

    public Task Prefetch(ExpertPrefetchHint hint)
    {
        if (hint is not null && offload.PrefetchEnabled)
        {
            // Off this grain's turn: the cache only reserves room and starts a background read of host weights (no tensor
            // is made here, the device lane is not used).
            var key = this.GetPrimaryKeyString();
            _ = Task.Run(() => offload.Prefetch(key, hint));
        }
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        var expert = _expert;
        _expert = null;
        return device.Lane.ReleaseAsync(expert);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Expert {Key} ({Plugin}) loaded on {Device} in {Ms:F1} ms")]
    private static partial void LogLoaded(ILogger logger, string key, string plugin, string device, double ms);
}
