using MoeGrains.Checkpoints;
using MoeGrains.Dispatch;
using MoeGrains.Generation;
using MoeGrains.Models;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Offload;

/// <summary>
/// Decoder sessions of concurrent requests whose mixture-of-experts layers run through one
/// <see cref="OffloadedMoeModel"/>: the sessions of a step feed their tokens together, and each layer's call waits until
/// every session of the step has reached it, then runs their rows as one batch (so the batch's experts are loaded once)
/// and hands each session its rows back. Which sessions step together is the caller's choice: in request order, or as
/// <see cref="TokenScheduler"/> groups them. The sessions share one <see cref="DecoderBackbone"/> (each keeps its own KV
/// caches), whose attention weights may be streamed layer by layer (<see cref="BackboneOptions"/>).
/// </summary>
public sealed class SessionBatcher : IDisposable
{
    private readonly OffloadedMoeModel _model;
    private readonly List<DecoderSession> _sessions = [];
    private readonly DecoderBackbone? _backbone;
    private readonly Dictionary<int, List<(int Slot, Tensor Hidden, TaskCompletionSource<MoeLayerAnswer> Done)>> _pending = [];
    private long[][] _tokens = [];
    private int _expected;
    private Exception? _failed;
    private long _layerCalls, _distinct;

    public SessionBatcher(OffloadedMoeModel model, PluginCatalog plugins, string checkpointPath, IServiceProvider services, int sessions, BackboneOptions? backbone = null)
    {
        _model = model;
        var file = SafeTensorsFile.Open(checkpointPath);
        var spec = ModelSpec.FromCheckpoint(model.Spec.Name, file);
        try
        {
            // One backbone for all the sessions when its stages can be shared; else (a plugin that keeps its KV cache
            // inside) a backbone per session.
            _backbone = DecoderBackbone.CanShare(plugins, file) ? DecoderBackbone.Load(plugins, spec, file, model.Device, services, backbone) : null;
            for (var i = 0; i < sessions; i++)
            {
                var slot = i;
                MoeLayerCallAsync moe = (layer, hidden, ct) => Arrive(slot, layer, hidden, ct);
                _sessions.Add(_backbone is not null ? DecoderSession.Create(_backbone, moe) : DecoderSession.Create(plugins, spec, file, model.Device, services, moe));
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        _tokens = new long[sessions][];
    }

    public IReadOnlyList<DecoderSession> Sessions => _sessions;

    /// <summary>The backbone weights all the sessions share (the first session's own when they cannot share one).</summary>
    public DecoderBackbone Backbone => _backbone ?? _sessions[0].Backbone;

    /// <summary>Mean distinct experts per layer call so far (what token scheduling lowers).</summary>
    public double DistinctExpertsPerLayerCall => _layerCalls == 0 ? 0 : (double)_distinct / _layerCalls;

    /// <summary>Feeds each listed session its tokens in one step; returns each one's next-token logits.</summary>
    public async Task<float[][]> StepAsync(IReadOnlyList<(int Slot, long[] Tokens)> members, CancellationToken cancellationToken = default)
    {
        lock (_pending)
        {
            if (_pending.Count > 0)
            {
                throw new InvalidOperationException("A step is already running.");
            }
        }
        _expected = members.Count;
        _failed = null;
        foreach (var (slot, tokens) in members)
        {
            _tokens[slot] = tokens;
        }
        var steps = members.Select(m => _sessions[m.Slot].AppendAsync(m.Tokens, cancellationToken)).ToArray();
        foreach (var step in steps)
        {
            // A session that fails before it reaches a layer would leave the others waiting for it there: fail them too.
            _ = step.ContinueWith(t => FailPending(t.Exception!.GetBaseException()), CancellationToken.None,
                TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        return await Task.WhenAll(steps);
    }

    private void FailPending(Exception error)
    {
        List<(int Slot, Tensor Hidden, TaskCompletionSource<MoeLayerAnswer> Done)> waiting;
        lock (_pending)
        {
            waiting = [.. _pending.Values.SelectMany(l => l)];
            _pending.Clear();
            _failed = new InvalidOperationException($"Another session of the step failed: {error.Message}", error);
        }
        foreach (var w in waiting)
        {
            w.Done.TrySetException(_failed);
        }
    }

    private Task<MoeLayerAnswer> Arrive(int slot, int layer, Tensor hidden, CancellationToken cancellationToken)
    {
        // Sessions resume on the thread pool, not nested in this call: each keeps its own stack.
        var done = new TaskCompletionSource<MoeLayerAnswer>(TaskCreationOptions.RunContinuationsAsynchronously);
        List<(int Slot, Tensor Hidden, TaskCompletionSource<MoeLayerAnswer> Done)>? ready = null;
        lock (_pending)
        {
            if (_failed is not null)
            {
                return Task.FromException<MoeLayerAnswer>(_failed);
            }
            if (!_pending.TryGetValue(layer, out var list))
            {
                _pending[layer] = list = [];
            }
            list.Add((slot, hidden, done));
            if (list.Count == _expected)
            {
                _pending.Remove(layer);
                ready = [.. list.OrderBy(p => p.Slot)];
            }
        }
        if (ready is not null)
        {
            _ = RunLayer(layer, ready, cancellationToken);
        }
        return done.Task;
    }

    private async Task RunLayer(int layer, List<(int Slot, Tensor Hidden, TaskCompletionSource<MoeLayerAnswer> Done)> members, CancellationToken cancellationToken)
    {
        try
        {
            using var all = cat(members.Select(m => m.Hidden).ToArray(), 0);
            var ids = members.SelectMany(m => _tokens[m.Slot]).ToArray();
            using var output = await _model.ForwardLayerAsync(layer, all, ids, cancellationToken: cancellationToken);
            _layerCalls++;
            _distinct += output.Calls.Length;
            var answers = new List<(TaskCompletionSource<MoeLayerAnswer>, MoeLayerAnswer)>();
            long offset = 0;
            foreach (var m in members)
            {
                var rows = m.Hidden.shape[0];
                using var view = output.Output.narrow(0, offset, rows);
                answers.Add((m.Done, new MoeLayerAnswer(view.clone(), (int)(rows * _model.Spec.TopK))));
                offset += rows;
            }
            foreach (var (done, answer) in answers)
            {
                done.SetResult(answer);
            }
        }
        catch (Exception e)
        {
            foreach (var m in members)
            {
                m.Done.TrySetException(e);
            }
        }
    }

    public void Dispose()
    {
        foreach (var s in _sessions) s.Dispose();
        _sessions.Clear();
        _backbone?.Dispose();
    }
}
