using Microsoft.Extensions.Options;
using MoeGrains.Devices;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Plugins;

namespace MoeGrains.Generation;

/// <summary>
/// One backbone per served model on this silo's device, shared by all of the silo's decoder sessions of that model
/// (each session keeps only its KV caches): N concurrent sessions hold one copy of the embedding, attention, norms and
/// head, not N. A model whose attention stages keep their KV cache inside (not <see cref="ISharedStage"/>) gets a
/// backbone per session, as before. Loaded on first use, on the device lane; freed with the silo. With
/// <c>MoeGrains:Offload:ResidentAttentionLayers</c> the shared backbone streams its attention weights layer by layer.
/// </summary>
public sealed class SiloBackbones(ModelCatalog models, PluginCatalog plugins, SiloDevice device, IServiceProvider services, IOptions<MoeGrainsOptions> options) : IDisposable
{
    private readonly Dictionary<string, DecoderBackbone?> _backbones = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();
    private bool _disposed;

    /// <summary>A new session of <paramref name="model"/> on this silo's device (call on the device lane).</summary>
    public DecoderSession CreateSession(string model, MoeLayerCallAsync moe)
    {
        if (Backbone(model) is { } shared)
        {
            return DecoderSession.Create(shared, moe, device.Lane);
        }
        return DecoderSession.Create(plugins, models.Get(model), models.File(model), device.Device, services, moe, device.Lane);
    }

    /// <summary>The model's shared backbone, loaded on first use; null when its stages cannot be shared.</summary>
    public DecoderBackbone? Backbone(string model)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_backbones.TryGetValue(model, out var known))
            {
                return known;
            }
            var file = models.File(model);
            // Stages that keep their KV cache inside cannot be shared (nor streamed): each session loads its own.
            var backbone = DecoderBackbone.CanShare(plugins, file)
                ? DecoderBackbone.Load(plugins, models.Get(model), file, device.Device, services,
                    new BackboneOptions { ResidentAttentionLayers = options.Value.Offload.ResidentAttentionLayers })
                : null;
            _backbones[model] = backbone;
            return backbone;
        }
    }

    /// <summary>The model's shared backbone if a session has loaded it on this silo (nothing is loaded here).</summary>
    public DecoderBackbone? Loaded(string model)
    {
        lock (_gate)
        {
            return _backbones.GetValueOrDefault(model);
        }
    }

    /// <summary>Device bytes of the shared backbones, per model.</summary>
    public IReadOnlyDictionary<string, long> DeviceBytes() => Each(b => b.DeviceBytes);

    /// <summary>The most device bytes each shared backbone held at once, per model.</summary>
    public IReadOnlyDictionary<string, long> PeakDeviceBytes() => Each(b => b.PeakDeviceBytes);

    private Dictionary<string, long> Each(Func<DecoderBackbone, long> figure)
    {
        lock (_gate)
        {
            return _backbones.Where(p => p.Value is not null).ToDictionary(p => p.Key, p => figure(p.Value!), StringComparer.Ordinal);
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            foreach (var b in _backbones.Values) b?.Dispose();
            _backbones.Clear();
        }
    }
}
