using System.Collections.Concurrent;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Dispatch;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using Orleans.Concurrency;
using Orleans.Placement;
using static TorchSharp.torch;

namespace MoeGrains.Generation;

/// <summary>
/// A generation session with context-coherent dispatch (ExFlow): every silo holds a replica of the session's backbone
/// and KV cache, and a decoded token travels with its hidden states to the silo of its top-1 expert, where that expert
/// runs locally and the next block's attention runs too, so a block costs at most one transfer (plus a call and an
/// answer for each other chosen expert that lives elsewhere) instead of a dispatch and a combine per remote expert. The
/// replicas' KV caches stay coherent by a context log: each block input a replica has not seen travels with the token
/// (or the next one) and the replica feeds it to its attention before it runs its own block, in the same batches, so
/// the logits are those of <see cref="DecoderSessionGrain"/>. Prompts (several tokens) run the default path on the home
/// silo. Key: <c>model/session</c>; the home replica is this grain, on the silo that starts the session.
/// </summary>
[Alias("moegrains.ICoherentDecoderSessionGrain")]
public interface ICoherentDecoderSessionGrain : IGrainWithStringKey
{
    [Alias("append")]
    Task<DecoderStep> Append(long[] tokens, string? router = null, CancellationToken cancellationToken = default);

    [Alias("close")]
    Task Close();

    [OneWay, Alias("process")]
    Task Process(CoherentToken token);

    [OneWay, Alias("complete")]
    Task Complete(CoherentToken token, float[] logits);
}

/// <summary>A replica of a coherent session on one silo. Key: <c>silo|model/session</c>.</summary>
[Alias("moegrains.ICoherentReplicaGrain")]
public interface ICoherentReplicaGrain : IGrainWithStringKey
{
    [OneWay, Alias("process")]
    Task Process(CoherentToken token);

    [Alias("close")]
    Task Close();
}

/// <summary>Block inputs <c>[rows, d_model]</c> of positions <c>Position..</c> at one block: a context-log entry.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ContextEntry")]
public sealed record ContextEntry([property: Id(0)] int Layer, [property: Id(1)] long Position, [property: Id(2)] WireTensor Input);

/// <summary>A decoded token on its way through the blocks.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.CoherentToken")]
public sealed record CoherentToken(
    [property: Id(0)] string Session,
    [property: Id(1)] long Position,
    [property: Id(2)] int Layer,
    [property: Id(3)] WireTensor Hidden,
    [property: Id(4)] WireTensor? Normed,
    [property: Id(5)] RoutingResult? Routing,
    [property: Id(6)] ContextEntry[] Backlog,
    [property: Id(7)] ContextEntry[] Inputs,
    [property: Id(8)] string? Router,
    [property: Id(9)] long Messages,
    [property: Id(10)] long Bytes,
    [property: Id(11)] long[] ExpertSlots,
    [property: Id(12)] Dictionary<string, long[]> Have,
    [property: Id(13)] string? Error)
{
    /// <summary>The token's id in the model's vocabulary (-1: unknown), recorded with its routes for routing-path predictors.</summary>
    [Id(14)] public long Vocabulary { get; init; } = -1;
}

/// <summary>Where experts run, as last seen by this silo (asked once, corrected by every answer).</summary>
public sealed class ExpertLocations
{
    private readonly ConcurrentDictionary<string, string> _silos = new(StringComparer.Ordinal);

    public async Task<string> SiloOf(IGrainFactory grains, string model, int layer, int expert)
    {
        var key = ExpertKey.Expert(model, layer, expert);
        if (!_silos.TryGetValue(key, out var silo))
        {
            silo = (await grains.GetGrain<IExpertGrain>(key).Describe()).Silo;
            _silos[key] = silo;
        }
        return silo;
    }

    public void Seen(string model, int layer, int expert, string silo) => _silos[ExpertKey.Expert(model, layer, expert)] = silo;

    /// <summary>Forgets a model's experts (a new plan moves them): they are asked again on next use.</summary>
    public void Forget(string model)
    {
        foreach (var key in _silos.Keys.Where(k => k.StartsWith(model + "/", StringComparison.Ordinal)).ToArray()) _silos.TryRemove(key, out _);
    }
}

/// <summary>One silo's replica of a coherent session: its backbone, KV positions per block, and the block step.</summary>
internal sealed class CoherentReplica(string model, ModelCatalog models, SiloBackbones backbones, SiloDevice device,
    IServiceProvider services, IOptions<MoeGrainsOptions> options, IOptions<TensorWireOptions> wire, ExpertLocations locations,
    RoutingTraceSink? traces) : IDisposable
{
    public DecoderSession? Session { get; private set; }

    /// <summary>KV positions per block.</summary>
    public long[] Have { get; private set; } = [];

    public string Model => model;

    public async Task<DecoderSession> EnsureAsync(MoeLayerCallAsync moe, CancellationToken cancellationToken)
    {
        if (Session is not null) return Session;
        var spec = models.Get(model);
        Session = await device.Lane.RunAsync(() => backbones.CreateSession(model, moe), cancellationToken);
        Have = new long[spec.Layers];
        return Session;
    }

    private WireTensor Wire(Tensor t) => WireTensor.FromTensor(t, TensorDType.Float32, wire.Value.MaxTensorBytes);

    /// <summary>Feeds the log entries this replica lacks (in order, whole entries: the batches they were computed in).</summary>
    public async Task CatchUpAsync(IEnumerable<ContextEntry> entries, long position, int belowLayer)
    {
        var session = Session!;
        foreach (var entry in entries.Where(e => e.Position < position || e.Layer < belowLayer).OrderBy(e => e.Layer).ThenBy(e => e.Position))
        {
            if (entry.Position + entry.Input.Shape[0] <= Have[entry.Layer]) continue;
            if (entry.Position != Have[entry.Layer])
            {
                throw new InvalidOperationException($"Context gap at block {entry.Layer}: the replica holds {Have[entry.Layer]} positions, the log resumes at {entry.Position}.");
            }
            await device.Lane.RunAsync(() =>
            {
                using var scope = NewDisposeScope();
                session.Attend(entry.Layer, entry.Input.ToTensor(device.Device));
                return true;
            });
            Have[entry.Layer] += entry.Input.Shape[0];
        }
    }

    /// <summary>
    /// Runs the token's blocks here until its top-1 expert lives elsewhere (returns the silo to send it to, with the token
    /// as it leaves) or the blocks are done (returns null and the logits).
    /// </summary>
    public async Task<(CoherentToken Token, string? Next, float[]? Logits)> RunAsync(CoherentToken t, IGrainFactory grains, string here, CancellationToken cancellationToken)
    {
        var session = Session!;
        var spec = session.Spec;
        var lane = device.Lane;
        // The context this replica lacks: older positions (backlog) and this token's inputs to the blocks before this one.
        await CatchUpAsync(t.Backlog.Concat(t.Inputs), t.Position, t.Normed is null ? t.Layer : t.Layer + 1);
        while (true)
        {
            if (t.Normed is null)
            {
                var layer = t.Layer;
                if (Have[layer] != t.Position)
                {
                    throw new InvalidOperationException($"Block {layer} holds {Have[layer]} positions here; the token is at {t.Position}.");
                }
                var input = t.Hidden;
                var (hw, nw) = await lane.RunAsync(() =>
                {
                    using var scope = NewDisposeScope();
                    var (h, n) = session.Attend(layer, input.ToTensor(device.Device));
                    return (Wire(h), Wire(n));
                }, cancellationToken);
                Have[layer]++;
                var routing = await grains.GetGrain<IRouterGrain>(ExpertKey.Layer(model, layer)).Route(nw, null, t.Router);
                if (traces?.Record(model, layer, [RoutingTraces.TokenId(t.Session, t.Position)], routing, t.Vocabulary >= 0 ? [t.Vocabulary] : null) is { } sampled)
                {
                    // Published like the default path's layer grain does, so the collector sees coherent sessions too.
                    await traces.PublishAsync(services, sampled);
                }
                var top = routing.Experts.Take(routing.K).FirstOrDefault(e => e >= 0);
                t = t with
                {
                    Hidden = hw, Normed = nw, Routing = routing,
                    Inputs = [.. t.Inputs, new ContextEntry(layer, t.Position, input)],
                };
                var target = await locations.SiloOf(grains, model, layer, top);
                if (target != here)
                {
                    return (Moved(t), target, null);
                }
            }

            // The experts of this block: the top-1 one is here; the others are called where they are.
            var block = t.Layer;
            var routed = t.Routing!;
            var residual = t.Hidden;
            var normed = t.Normed!;
            long messages = 0, bytes = 0;
            using var x = await lane.RunAsync(() => normed.ToTensor(device.Device), cancellationToken);
            var timeout = TimeSpan.FromMilliseconds(options.Value.ExpertTimeoutMs);
            using var result = await MoeLayerRunner.RunAsync(x, routed, spec.Experts, spec.DModel, async (e, batch, ct) =>
            {
                var payload = await lane.RunAsync(() => WireTensor.FromTensor(batch, TensorDType.Float32, wire.Value.MaxTensorBytes), ct);
                var answer = await ExpertMoves.CallAsync(grains.GetGrain<IExpertGrain>(ExpertKey.Expert(model, block, e)), payload, ct);
                locations.Seen(model, block, e, answer.Silo);
                var remote = answer.Silo != here;
                if (remote)
                {
                    Interlocked.Add(ref messages, 2);
                    Interlocked.Add(ref bytes, payload.WireBytes + answer.Output.WireBytes);
                }
                var y = await lane.RunAsync(() => answer.Output.ToTensor(device.Device), ct);
                return new ExpertAnswer(y, answer.Silo, answer.ComputeMs, remote ? payload.WireBytes + answer.Output.WireBytes : 0);
            }, options.Value.KMin, timeout, cancellationToken, lane);
            var slots = t.ExpertSlots.ToArray();
            slots[block] += result.Calls.Sum(c => c.Tokens);
            var output = result.Output;
            var next = await lane.RunAsync(() =>
            {
                using var scope = NewDisposeScope();
                using var h = residual.ToTensor(device.Device);
                var y = Scalars.Add(h, output);
                return block + 1 == spec.Layers ? (Wire: (WireTensor?)null, Logits: session.Head(y, false)[0]) : (Wire: Wire(y), Logits: (float[]?)null);
            }, cancellationToken);
            t = t with { Messages = t.Messages + messages, Bytes = t.Bytes + bytes, ExpertSlots = slots, Normed = null, Routing = null };
            if (next.Logits is not null)
            {
                return (t, null, next.Logits);
            }
            t = t with { Layer = block + 1, Hidden = next.Wire! };
        }
    }

    // What a hop carries: the hidden states, the MoE input and routing, the context log; counted as one message.
    private static CoherentToken Moved(CoherentToken t) => t with
    {
        Messages = t.Messages + 1,
        Bytes = t.Bytes + t.Hidden.WireBytes + (t.Normed?.WireBytes ?? 0) + (t.Routing is { } r ? r.Experts.Length * 8L : 0)
            + t.Backlog.Sum(e => e.Input.WireBytes + 12) + t.Inputs.Sum(e => e.Input.WireBytes + 12),
    };

    public void Dispose()
    {
        var session = Session;
        Session = null;
        if (session is not null)
        {
            _ = device.Lane.RunAsync(() => { session.Dispose(); return true; });
        }
    }
}

/// <summary>Creates replicas with this silo's services.</summary>
internal sealed class CoherentReplicaFactory(ModelCatalog models, SiloBackbones backbones, SiloDevice device, IServiceProvider services,
    IOptions<MoeGrainsOptions> options, IOptions<TensorWireOptions> wire, ExpertLocations locations, RoutingTraceSink? traces = null)
{
    public CoherentReplica Create(string model) =>
        new(model, models, backbones, device, services, options, wire, locations, traces);

    public SiloDevice Device => device;

    public IOptions<MoeGrainsOptions> Options => options;

    public IOptions<TensorWireOptions> Wire => wire;
}

internal static class CoherentRouting
{
    public static string ReplicaKey(string silo, string session) => $"{silo}|{session}";

    /// <summary>Sends the token on to the replica on <paramref name="silo"/> (the home session grain when that is its silo).</summary>
    public static Task Send(IGrainFactory grains, string home, string silo, CoherentToken token) =>
        silo == home
            ? grains.GetGrain<ICoherentDecoderSessionGrain>(token.Session).Process(token)
            : grains.GetGrain<ICoherentReplicaGrain>(ReplicaKey(silo, token.Session)).Process(token);

    public static string HomeOf(CoherentToken token) => token.Have.Keys.First(k => k.StartsWith("home:", StringComparison.Ordinal))[5..];
}

[PreferLocalPlacement]
[Reentrant]
internal sealed class CoherentDecoderSessionGrain(CoherentReplicaFactory factory) : Grain, ICoherentDecoderSessionGrain
{
    private CoherentReplica? _replica;
    private string? _router;
    private readonly List<ContextEntry> _log = [];
    private readonly Dictionary<string, long[]> _have = new(StringComparer.Ordinal);
    private TaskCompletionSource<(CoherentToken Token, float[] Logits)>? _pending;
    private long _messages, _bytes;
    private int _silos = 1;
    private long[]? _fed; // the prompt being fed (vocabulary ids), sent with its rows to the layers

    public async Task<DecoderStep> Append(long[] tokens, string? router, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Length > factory.Options.Value.MaxTokensPerRequest)
        {
            throw new GenerationRequestException($"{tokens.Length} tokens exceed the limit of {factory.Options.Value.MaxTokensPerRequest} per request.");
        }
        if (_pending is not null)
        {
            throw new GenerationRequestException("This session is already decoding a token.");
        }
        var key = this.GetPrimaryKeyString();
        var slash = key.IndexOf('/');
        if (slash <= 0 || slash == key.Length - 1)
        {
            throw new UnknownExpertException($"'{key}' is not a session key (model/session).");
        }
        if (_replica?.Session is not null && !string.Equals(router, _router, StringComparison.OrdinalIgnoreCase))
        {
            throw new GenerationRequestException($"This session routes with '{_router ?? "the model's router"}'; start a new session for '{router ?? "the model's router"}'.");
        }
        _router = router;
        var here = RuntimeIdentity;
        var lane = factory.Device.Lane;
        _replica ??= factory.Create(key[..slash]);
        var model = _replica.Model;
        var session = await _replica.EnsureAsync(async (layer, hidden, ct) =>
        {
            var start = _replica.Session?.Position ?? 0;
            var ids = Enumerable.Range(0, (int)hidden.shape[0]).Select(i => RoutingTraces.TokenId(key, start + i)).ToArray();
            var vocabulary = _fed is { } fed && fed.Length == ids.Length ? fed : null;
            var payload = await lane.RunAsync(() => WireTensor.FromTensor(hidden, TensorDType.Float32, factory.Wire.Value.MaxTensorBytes), ct);
            var result = await GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer(model, layer))
                .Forward(new MoeLayerRequest(payload) { Router = router, TokenIds = ids, Vocabulary = vocabulary }, ct);
            _messages += 2L * result.Calls.Count(c => c.Silo != here);
            _bytes += result.CrossSiloBytes;
            return new MoeLayerAnswer(await lane.RunAsync(() => result.Output.ToTensor(factory.Device.Device), ct), result.Calls.Sum(c => c.Tokens));
        }, cancellationToken);
        if (session.Position == 0)
        {
            _silos = (await GrainFactory.GetGrain<IClusterInfoGrain>(0).Silos()).Length;
            if (tokens.Length > session.ContextLength)
            {
                throw new GenerationRequestException($"The prompt has {tokens.Length} tokens; the model's context holds {session.ContextLength}.");
            }
        }

        float[] logits;
        if (tokens.Length > 1)
        {
            // A prompt: the default path here, its block inputs logged for the other replicas.
            var position = session.Position;
            var inputs = new List<ContextEntry>();
            session.LayerInputs = (layer, x) => inputs.Add(new ContextEntry(layer, position, WireTensor.FromTensor(x, TensorDType.Float32, factory.Wire.Value.MaxTensorBytes)));
            _fed = tokens;
            try
            {
                logits = await session.AppendAsync(tokens, cancellationToken);
            }
            finally
            {
                session.LayerInputs = null;
                _fed = null;
            }
            _log.AddRange(inputs);
            for (var l = 0; l < _replica.Have.Length; l++) _replica.Have[l] += tokens.Length;
        }
        else
        {
            var position = session.Position;
            var x = await lane.RunAsync(() =>
            {
                using var scope = NewDisposeScope();
                return WireTensor.FromTensor(session.Embed(tokens), TensorDType.Float32, factory.Wire.Value.MaxTensorBytes);
            }, cancellationToken);
            var token = new CoherentToken(key, position, 0, x, null, null, Backlog(session.Spec.Layers, here), [], router, 0, 0,
                new long[session.Spec.Layers], new Dictionary<string, long[]>(StringComparer.Ordinal) { ["home:" + here] = [] }, null)
            {
                Vocabulary = tokens.Length == 1 ? tokens[0] : -1,
            };
            _pending = new TaskCompletionSource<(CoherentToken, float[])>(TaskCreationOptions.RunContinuationsAsynchronously);
            var pending = _pending;
            try
            {
                await Process(token);
                using var reg = cancellationToken.Register(() => pending.TrySetCanceled());
                var (done, l) = await pending.Task.WaitAsync(TimeSpan.FromMilliseconds(factory.Options.Value.ExpertTimeoutMs * (session.Spec.Layers + 1)), cancellationToken);
                logits = l;
                foreach (var (silo, have) in done.Have.Where(h => !h.Key.StartsWith("home:", StringComparison.Ordinal))) _have[silo] = have;
                _log.AddRange(done.Inputs);
                _messages += done.Messages;
                _bytes += done.Bytes;
                session.Advance(1, done.ExpertSlots);
            }
            finally
            {
                _pending = null;
            }
        }
        return new DecoderStep(logits, session.Position, here)
        {
            ExpertSlots = [.. session.ExpertSlots],
            CrossSiloMessages = _messages,
            CrossSiloBytes = _bytes,
        };
    }

    // The log entries some other replica has not fed yet (replicas never visited lack everything).
    private ContextEntry[] Backlog(int layers, string here)
    {
        if (_silos <= 1) return [];
        var lowest = new long[layers];
        for (var l = 0; l < layers; l++)
        {
            var others = _have.Where(h => h.Key != here).Select(h => h.Value[l]).ToList();
            lowest[l] = others.Count < _silos - 1 ? 0 : Math.Min(others.Min(), _replica!.Have[l]);
        }
        return [.. _log.Where(e => e.Position + e.Input.Shape[0] > lowest[e.Layer])];
    }

    public async Task Process(CoherentToken token)
    {
        var here = RuntimeIdentity;
        try
        {
            if (_replica?.Session is null)
            {
                throw new InvalidOperationException("The home replica has no session.");
            }
            var (t, next, logits) = await _replica.RunAsync(token, GrainFactory, here, CancellationToken.None);
            if (next is not null)
            {
                await CoherentRouting.Send(GrainFactory, here, next, t);
            }
            else
            {
                await Complete(t, logits!);
            }
        }
        catch (Exception e)
        {
            _pending?.TrySetException(e);
        }
    }

    public Task Complete(CoherentToken token, float[] logits)
    {
        if (token.Error is not null)
        {
            _pending?.TrySetException(new ExpertFailedException($"Context-coherent step failed: {token.Error}"));
        }
        else
        {
            _pending?.TrySetResult((token, logits));
        }
        return Task.CompletedTask;
    }

    public async Task Close()
    {
        var key = this.GetPrimaryKeyString();
        foreach (var silo in _have.Keys.ToArray())
        {
            await GrainFactory.GetGrain<ICoherentReplicaGrain>(CoherentRouting.ReplicaKey(silo, key)).Close();
        }
        _replica?.Dispose();
        _replica = null;
        DeactivateOnIdle();
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _replica?.Dispose();
        _replica = null;
        return Task.CompletedTask;
    }
}

[SiloTargetPlacement]
internal sealed class CoherentReplicaGrain(CoherentReplicaFactory factory) : Grain, ICoherentReplicaGrain
{
    private CoherentReplica? _replica;

    public async Task Process(CoherentToken token)
    {
        var here = RuntimeIdentity;
        var home = CoherentRouting.HomeOf(token);
        try
        {
            var key = token.Session;
            var slash = key.IndexOf('/');
            _replica ??= factory.Create(key[..slash]);
            await _replica.EnsureAsync((_, _, _) => throw new InvalidOperationException("Replicas run single tokens only."), CancellationToken.None);
            var (t, next, logits) = await _replica.RunAsync(token, GrainFactory, here, CancellationToken.None);
            t = t with { Have = new Dictionary<string, long[]>(t.Have) { [here] = [.. _replica.Have] } };
            if (next is not null)
            {
                await CoherentRouting.Send(GrainFactory, home, next, t);
            }
            else
            {
                // The answer goes home: one more message, with the logits and this step's block inputs.
                t = t with { Messages = t.Messages + 1, Bytes = t.Bytes + logits!.Length * 4L + t.Inputs.Sum(e => e.Input.WireBytes + 12) };
                await GrainFactory.GetGrain<ICoherentDecoderSessionGrain>(token.Session).Complete(t, logits);
            }
        }
        catch (Exception e)
        {
            await GrainFactory.GetGrain<ICoherentDecoderSessionGrain>(token.Session).Complete(token with { Error = $"{e.GetType().Name}: {e.Message}" }, []);
        }
    }

    public Task Close()
    {
        _replica?.Dispose();
        _replica = null;
        DeactivateOnIdle();
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _replica?.Dispose();
        _replica = null;
        return Task.CompletedTask;
    }
}
