using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using Microsoft.Extensions.Logging;
using Orleans.Placement;
using Orleans.Streams;

namespace MoeGrains.Generation;

/// <summary>
/// Hosts a <see cref="DecoderSession"/> on this silo's device: placed on the silo that starts the session, its MoE
/// layers dispatched through <see cref="IMoeLayerGrain"/> (a local stateless worker that calls the expert grains).
/// <see cref="Generate"/> runs the decoding loop here and publishes the tokens on the session's Orleans stream.
/// </summary>
[PreferLocalPlacement]
internal sealed class DecoderSessionGrain(ModelCatalog models, PluginCatalog plugins, SiloDevice device, SiloBackbones backbones,
    IOptions<MoeGrainsOptions> options, IOptions<TensorWireOptions> wire, ILogger<DecoderSessionGrain> logger) : Grain, IDecoderSessionGrain
{
    private DecoderSession? _session;
    private DecoderSession? _weak; // SCMoE's weak pass, with its own KV cache
    private string? _router;
    private Task? _generation;
    private CancellationTokenSource? _cancelGeneration;
    private readonly List<GenerationEvent> _published = []; // every event of the generation, for Replay

    private static readonly TimeSpan GenerationKeepAlive = TimeSpan.FromMinutes(10);

    private long _messages, _bytes;

    // The tokens being fed (vocabulary ids): each MoE layer step of that feed has one hidden row per token, and sends
    // them with the rows (MoeLayerRequest.Vocabulary) for routing traces and expert prefetch.
    private long[]? _fed;

    public async Task<DecoderStep> Append(long[] tokens, string? router, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (_generation is not null)
        {
            throw new GenerationRequestException("This session generates on its own (Generate); start a new session to feed tokens.");
        }
        if (tokens.Length > options.Value.MaxTokensPerRequest)
        {
            throw new GenerationRequestException($"{tokens.Length} tokens exceed the limit of {options.Value.MaxTokensPerRequest} per request.");
        }
        if (_session is not null && !string.Equals(router, _router, StringComparison.OrdinalIgnoreCase))
        {
            throw new GenerationRequestException($"This session routes with '{_router ?? "the model's router"}'; start a new session for '{router ?? "the model's router"}'.");
        }
        _router = router;
        // A per-sequence router (THOR per sequence) draws from the session's key: each session is a sequence.
        var session = _session ??= await Start(RouterNames.ForSequence(router, models.Get(ModelName()).RouterPlugin, plugins, RouterNames.Seed(this.GetPrimaryKeyString())),
            "", cancellationToken);
        if (session.Position + tokens.Length > session.ContextLength && session.Position == 0)
        {
            throw new GenerationRequestException($"The prompt has {tokens.Length} tokens; the model's context holds {session.ContextLength}.");
        }
        _fed = tokens;
        float[] logits;
        try
        {
            logits = await session.AppendAsync(tokens, cancellationToken);
        }
        finally
        {
            _fed = null;
        }
        return new DecoderStep(logits, session.Position, RuntimeIdentity)
        {
            ExpertSlots = [.. session.ExpertSlots],
            CrossSiloMessages = _messages,
            CrossSiloBytes = _bytes,
        };
    }

    public async Task<GenerationStarted> Generate(int[] prompt, GenerationOptions generation, string? router, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(generation);
        if (_generation is not null || _session is not null)
        {
            throw new GenerationRequestException("This session has already been used; start a new session to generate.");
        }
        if (prompt.Length > options.Value.MaxTokensPerRequest)
        {
            throw new GenerationRequestException(GenerationRequestValidator.PromptField, $"{prompt.Length} tokens exceed the limit of {options.Value.MaxTokensPerRequest} per request.");
        }
        GenerationRequestValidator.CheckOptions(generation);
        GenerationRequestValidator.CheckRouter(router, plugins);
        var spec = models.Get(ModelName());
        var contrast = generation.SelfContrast;
        contrast?.Validate(spec.Experts);
        // A per-sequence router (THOR per sequence) draws from the request's seed, as it does in process.
        var session = await Start(RouterNames.ForSequence(router, spec.RouterPlugin, plugins, generation.Seed), "", cancellationToken);
        _session = session;
        _router = router;
        DecoderStepAsync step = session.AppendAsync;
        if (contrast is not null)
        {
            // SCMoE: the weak pass is a second backbone state (KV cache) of this session whose layers route rank-k,
            // through the same layer and expert grains.
            var weak = _weak = await Start(contrast.WeakRouter, "#weak", cancellationToken);
            step = contrast.Step(session.AppendAsync, weak.AppendAsync);
        }
        var feed = step;
        step = (tokens, ct) =>
        {
            _fed = tokens; // both passes of SCMoE feed the same tokens
            return feed(tokens, ct);
        };
        GenerationRequestValidator.CheckPromptTokens(prompt.Length, session.ContextLength);
        if (prompt.Any(t => t < 0 || t >= session.VocabSize))
        {
            throw new GenerationRequestException(GenerationRequestValidator.PromptField, $"Token ids must be in 0..{session.VocabSize - 1}.");
        }
        var stream = this.GetStreamProvider(GenerationStreams.ProviderName).GetStream<GenerationEvent>(GenerationStreams.Id(this.GetPrimaryKeyString()));
        var cancel = _cancelGeneration = new CancellationTokenSource();
        // Runs on this activation, between the calls it receives; Close cancels it.
        _generation = Run(session, step, prompt, generation, stream, cancel.Token);
        return new GenerationStarted(prompt.Length, session.ContextLength, RuntimeIdentity);
    }

    private async Task Run(DecoderSession session, DecoderStepAsync step, int[] prompt, GenerationOptions generation, IAsyncStream<GenerationEvent> stream,
        CancellationToken cancellationToken)
    {
        long sequence = 0;
        var finish = FinishReason.Length;
        string? error = null;
        try
        {
            await foreach (var token in TextGeneration.GenerateAsync(step, prompt, generation, session.ContextLength, cancellationToken))
            {
                // The loop is not a call: keep the activation from being collected as idle while it runs.
                DelayDeactivation(GenerationKeepAlive);
                var e = new GenerationEvent(sequence++, token);
                _published.Add(e);
                await Publish(stream, e);
                if (token == generation.StopToken)
                {
                    finish = FinishReason.Stop;
                }
            }
        }
        catch (Exception e)
        {
            finish = FinishReason.Error;
            error = e is OperationCanceledException ? "The generation was cancelled." : e.Message;
            logger.LogWarning(e, "Generation of session {Session} failed after {Tokens} tokens", this.GetPrimaryKeyString(), sequence);
        }
        try
        {
            // SCMoE counts both passes' experts.
            var perToken = session.ExpertSlots.Select((e, l) => (double)(e + (_weak?.ExpertSlots[l] ?? 0)) / Math.Max(1, session.Position)).ToArray();
            var end = GenerationEvent.End(sequence, finish, error) with { ExpertsPerToken = perToken, Silo = RuntimeIdentity };
            _published.Add(end);
            await Publish(stream, end);
        }
        catch (Exception e)
        {
            logger.LogWarning(e, "The end marker of session {Session} could not be published", this.GetPrimaryKeyString());
        }
    }

    /// <summary>
    /// Publishes one event, waiting at most <see cref="GenerationStreams.PublishWait"/>. The event is already in the grain's record, so a
    /// failed or stalled publication (the stream's queue grain was on a lost silo: the call would wait the whole response
    /// timeout) costs the consumer a replay, never the generation its pace.
    /// </summary>
    private async Task Publish(IAsyncStream<GenerationEvent> stream, GenerationEvent e)
    {
        try
        {
            await stream.OnNextAsync(e).WaitAsync(GenerationStreams.PublishWait);
        }
        catch (Exception failure) when (failure is not OperationCanceledException)
        {
            logger.LogWarning(failure, "Event {Sequence} of session {Session} was not published; consumers replay it", e.Sequence, this.GetPrimaryKeyString());
        }
    }

    public Task<GenerationEvent[]> Replay(long fromSequence)
    {
        // A consumer only asks after Generate succeeded on this grain. An activation that never generated is a new one:
        // the silo that held the session (its KV cache and its events) was lost. Say so, rather than answer "nothing yet"
        // forever to a consumer that would then wait forever.
        if (_generation is null && _published.Count == 0)
        {
            throw new SessionLostException(
                $"Session '{this.GetPrimaryKeyString()}' lost its state (its silo was lost, or it was closed) after the consumer had seen {fromSequence} events; start a new session.");
        }
        return Task.FromResult(fromSequence < 0 ? [] : _published.Skip((int)Math.Min(fromSequence, int.MaxValue)).ToArray());
    }

    private string ModelName()
    {
        var key = this.GetPrimaryKeyString();
        var slash = key.IndexOf('/');
        if (slash <= 0 || slash == key.Length - 1)
        {
            throw new UnknownExpertException($"'{key}' is not a session key (model/session).");
        }
        return key[..slash];
    }

    /// <summary>A backbone state of this session routed by <paramref name="router"/>; <paramref name="pass"/> tells its routing traces apart.</summary>
    private async Task<DecoderSession> Start(string? router, string pass, CancellationToken cancellationToken)
    {
        var key = this.GetPrimaryKeyString() + pass;
        var model = ModelName();
        DecoderSession? created = null;
        var lane = device.Lane;
        // On the silo's shared backbone of the model: this session holds only its KV caches.
        created = await lane.RunAsync(() => backbones.CreateSession(model, async (layer, hidden, ct) =>
        {
            var payload = await lane.RunAsync(() => WireTensor.FromTensor(hidden, TensorDType.Float32, wire.Value.MaxTensorBytes), ct);
            var start = created?.Position ?? 0;
            var ids = Enumerable.Range(0, (int)hidden.shape[0]).Select(i => RoutingTraces.TokenId(key, start + i)).ToArray();
            var vocabulary = _fed is { } fed && fed.Length == ids.Length ? fed : null;
            var request = new MoeLayerRequest(payload) { Router = router, TokenIds = ids, Vocabulary = vocabulary };
            MoeLayerResult result;
            while (true)
            {
                try
                {
                    result = await GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer(model, layer)).Forward(request, ct);
                    break;
                }
                catch (ExpertQuorumException e) when (e.FailedExperts.Except(request.MaskedExperts ?? []).Any())
                {
                    // Too few of a token's experts answered (their silo was lost, say): route again around every expert
                    // that failed so far, so the step loses those experts the k_min way instead of ending the
                    // generation. Each retry masks at least one more expert, so this ends; a failure that names no new
                    // expert is the caller's.
                    var masked = (request.MaskedExperts ?? []).Union(e.FailedExperts).Order().ToArray();
                    logger.LogWarning("Layer {Layer} of session {Session} lost experts {Experts}; routing around them", layer, key, string.Join(",", masked));
                    request = request with { MaskedExperts = masked };
                }
            }
            _messages += 2L * result.Calls.Count(c => c.Silo != result.Silo);
            _bytes += result.CrossSiloBytes;
            return new MoeLayerAnswer(await lane.RunAsync(() => result.Output.ToTensor(device.Device), ct), result.Calls.Sum(c => c.Tokens));
        }), cancellationToken);
        return created;
    }

    public async Task Close()
    {
        await StopGeneration();
        Release();
        DeactivateOnIdle();
    }

    public override async Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        await StopGeneration();
        Release();
    }

    private async Task StopGeneration()
    {
        if (_generation is { } generation)
        {
            if (!generation.IsCompleted)
            {
                await (_cancelGeneration?.CancelAsync() ?? Task.CompletedTask);
            }
            await generation; // Run catches its own failures
        }
        _cancelGeneration?.Dispose();
        _cancelGeneration = null;
    }

    private void Release()
    {
        foreach (var session in new[] { _session, _weak })
        {
            if (session is not null)
            {
                // Released on the device thread, where its tensors live; nothing waits for it.
                _ = device.Lane.RunAsync(() => { session.Dispose(); return true; });
            }
        }
        _session = null;
        _weak = null;
    }
}
