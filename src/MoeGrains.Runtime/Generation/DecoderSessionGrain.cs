using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using Orleans.Placement;

namespace MoeGrains.Generation;

/// <summary>
/// Hosts a <see cref="DecoderSession"/> on this silo's device: placed on the silo that starts the session, its MoE
/// layers dispatched through <see cref="IMoeLayerGrain"/> (a local stateless worker that calls the expert grains).
/// </summary>
[PreferLocalPlacement]
internal sealed class DecoderSessionGrain(ModelCatalog models, PluginCatalog plugins, SiloDevice device, IServiceProvider services,
    IOptions<MoeGrainsOptions> options, IOptions<TensorWireOptions> wire) : Grain, IDecoderSessionGrain
{
    private DecoderSession? _session;
    private string? _router;
    private long _messages, _bytes;

    public async Task<DecoderStep> Append(long[] tokens, string? router, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Length > options.Value.MaxTokensPerRequest)
        {
            throw new GenerationRequestException($"{tokens.Length} tokens exceed the limit of {options.Value.MaxTokensPerRequest} per request.");
        }
        if (_session is not null && !string.Equals(router, _router, StringComparison.OrdinalIgnoreCase))
        {
            throw new GenerationRequestException($"This session routes with '{_router ?? "the model's router"}'; start a new session for '{router ?? "the model's router"}'.");
        }
        _router = router;
        var session = _session ??= await Start(router, cancellationToken);
        if (session.Position + tokens.Length > session.ContextLength && session.Position == 0)
        {
            throw new GenerationRequestException($"The prompt has {tokens.Length} tokens; the model's context holds {session.ContextLength}.");
        }
        var logits = await session.AppendAsync(tokens, cancellationToken);
        return new DecoderStep(logits, session.Position, RuntimeIdentity)
        {
            ExpertSlots = [.. session.ExpertSlots],
            CrossSiloMessages = _messages,
            CrossSiloBytes = _bytes,
        };
    }

    private Task<DecoderSession> Start(string? router, CancellationToken cancellationToken)
    {
        var key = this.GetPrimaryKeyString();
        var slash = key.IndexOf('/');
        if (slash <= 0 || slash == key.Length - 1)
        {
            throw new UnknownExpertException($"'{key}' is not a session key (model/session).");
        }
        var model = key[..slash];
        var spec = models.Get(model);
        var file = models.File(model);
        var lane = device.Lane;
        return lane.RunAsync(() => DecoderSession.Create(plugins, spec, file, device.Device, services, async (layer, hidden, ct) =>
        {
            var payload = await lane.RunAsync(() => WireTensor.FromTensor(hidden, TensorDType.Float32, wire.Value.MaxTensorBytes), ct);
            var start = _session?.Position ?? 0;
            var ids = Enumerable.Range(0, (int)hidden.shape[0]).Select(i => RoutingTraces.TokenId(key, start + i)).ToArray();
            var result = await GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer(model, layer))
                .Forward(new MoeLayerRequest(payload) { Router = router, TokenIds = ids }, ct);
            _messages += 2L * result.Calls.Count(c => c.Silo != result.Silo);
            _bytes += result.CrossSiloBytes;
            return new MoeLayerAnswer(await lane.RunAsync(() => result.Output.ToTensor(device.Device), ct), result.Calls.Sum(c => c.Tokens));
        }, lane), cancellationToken);
    }

    public Task Close()
    {
        Release();
        DeactivateOnIdle();
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        Release();
        return Task.CompletedTask;
    }

    private void Release()
    {
        var session = _session;
        _session = null;
        if (session is not null)
        {
            // Released on the device thread, where its tensors live; nothing waits for it.
            _ = device.Lane.RunAsync(() => { session.Dispose(); return true; });
        }
    }
}
