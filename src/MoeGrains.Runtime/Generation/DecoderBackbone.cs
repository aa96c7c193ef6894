using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Models;
using MoeGrains.Offload;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Generation;

/// <summary>How a <see cref="DecoderBackbone"/> keeps its weights on the device.</summary>
public sealed record BackboneOptions
{
    /// <summary>
    /// Most blocks whose attention weights are on the device at once; 0 (the default) keeps every block's resident.
    /// Below the number of blocks, the attention weights wait in host memory and a block's are made into its stage when
    /// the block runs (layer-wise streaming), evicting the resident block whose turn comes last. Needs stages that keep
    /// their per-session state apart (<see cref="ISharedStage"/>).
    /// </summary>
    public int ResidentAttentionLayers { get; init; }
}

/// <summary>What a backbone's streamed attention weights cost so far.</summary>
public sealed record BackboneStreamingStats(long Accesses, long Hits, long Loads, long BytesCopied, int PeakResidentLayers);

/// <summary>
/// The weights of a decoder checkpoint's backbone (token embedding, each block's attention and norm, output head) as
/// plugin stages on one device, in Mixtral's layout (stages <c>NAME-embed</c>, <c>NAME-attention</c>, <c>NAME-norm</c>,
/// <c>NAME-head</c> of the checkpoint's <c>moegrains.backbone_plugin</c>). When its attention stages are
/// <see cref="ISharedStage"/>s, one backbone serves any number of <see cref="DecoderSession"/>s, each holding only its
/// own KV caches; otherwise it serves the one session it was made for. With
/// <see cref="BackboneOptions.ResidentAttentionLayers"/> below the block count, attention weights are streamed layer by
/// layer from host memory. Device bytes of the weights are counted (<see cref="DeviceBytes"/>,
/// <see cref="PeakDeviceBytes"/>). Sessions may call it from several threads: it runs one stage call at a time (its
/// modules are shared; on a silo the device lane orders the calls anyway), each inside a dispose scope, and the
/// streaming cache pins a block's stage while it computes.
/// </summary>
public sealed class DecoderBackbone : IDisposable
{
    public const string BackbonePluginKey = "moegrains.backbone_plugin";

    private readonly PluginCatalog _plugins;
    private readonly IServiceProvider _services;
    private readonly string _backbone;
    private readonly IReadOnlyDictionary<string, string> _settings;
    private readonly List<IExpert> _resident = [];
    private readonly IExpert _embed;
    private readonly IExpert[] _norms;
    private readonly IExpert _head;
    private readonly IExpert?[] _attention;
    private readonly HostExpertWeights[]? _hostAttention;
    private readonly DeviceExpertCache<OffloadedMoeModel.ResidentExpert>? _streamed;
    private readonly long[] _attentionBytes;
    private readonly Lock _compute = new();
    private DeviceBytes _deviceBytes;
    private int _lastLayer;
    private bool _disposed;

    private DecoderBackbone(PluginCatalog plugins, ModelSpec spec, SafeTensorsFile checkpoint, Device device, IServiceProvider services, BackboneOptions options)
    {
        (_plugins, Spec, Device, _services, Options) = (plugins, spec, device, services, options);
        _backbone = PluginName(checkpoint);
        _settings = checkpoint.Metadata;
        ContextLength = checkpoint.Metadata.TryGetValue("max_position_embeddings", out var c) && int.TryParse(c, out var n) && n > 0
            ? n : throw new CheckpointException($"Checkpoint '{checkpoint.Path}': metadata 'max_position_embeddings' is missing.");
        if (options.ResidentAttentionLayers < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.ResidentAttentionLayers, "ResidentAttentionLayers must not be negative.");
        }
        Shareable = CanShare(plugins, checkpoint);
        var streamed = options.ResidentAttentionLayers > 0 && options.ResidentAttentionLayers < spec.Layers;
        if (streamed && !Shareable)
        {
            throw new ArgumentException($"Streaming attention weights needs '{_backbone}-attention' stages that keep their KV cache apart ({nameof(ISharedStage)}); this one does not.", nameof(options));
        }
        _attention = new IExpert?[spec.Layers];
        _norms = new IExpert[spec.Layers];
        _attentionBytes = new long[spec.Layers];
        try
        {
            _embed = Resident("embed", -1, checkpoint, ("weight", "model.embed_tokens.weight"));
            _hostAttention = streamed ? new HostExpertWeights[spec.Layers] : null;
            for (var layer = 0; layer < spec.Layers; layer++)
            {
                var names = Under(checkpoint, $"model.layers.{layer}.", "input_layernorm.", "self_attn.");
                if (_hostAttention is not null)
                {
                    _hostAttention[layer] = Host(checkpoint, names);
                    _attentionBytes[layer] = _hostAttention[layer].Weights.Values.Sum(w => (long)w.Values.Length * sizeof(float));
                }
                else
                {
                    _attention[layer] = Resident("attention", layer, checkpoint, names);
                    _attentionBytes[layer] = _attention[layer]!.Descriptor.ParameterBytes;
                }
                _norms[layer] = Resident("norm", layer, checkpoint, ("weight", $"model.layers.{layer}.post_attention_layernorm.weight"));
            }
            _head = Resident("head", -1, checkpoint, ("norm.weight", "model.norm.weight"),
                ("lm_head.weight", checkpoint.Tensors.ContainsKey("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight"));
            VocabSize = _head.Descriptor.OutputDim;
            if (_hostAttention is not null)
            {
                var host = _hostAttention;
                _streamed = new DeviceExpertCache<OffloadedMoeModel.ResidentExpert>(new ExpertCacheBudget(options.ResidentAttentionLayers), ExpertCachePolicy.Predictive,
                    id => _attentionBytes[id.Layer], id => (new OffloadedMoeModel.ResidentExpert(host[id.Layer]), _attentionBytes[id.Layer]))
                {
                    ReportsMetrics = false,
                    // Blocks run in order, cycling: the block whose turn is farthest from the one running now goes first
                    // (read under the compute lock, in Acquire).
                    NextUse = id => (id.Layer - _lastLayer + spec.Layers) % spec.Layers,
                };
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Loads the backbone of <paramref name="checkpoint"/> onto <paramref name="device"/> (call on the device's lane).</summary>
    public static DecoderBackbone Load(PluginCatalog plugins, ModelSpec spec, SafeTensorsFile checkpoint, Device device, IServiceProvider services, BackboneOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        return new DecoderBackbone(plugins, spec, checkpoint, device, services, options ?? new BackboneOptions());
    }

    /// <summary>Whether sessions of <paramref name="checkpoint"/> can share a backbone: its attention plugin is an <see cref="ISharedStage"/> (nothing is loaded).</summary>
    public static bool CanShare(PluginCatalog plugins, SafeTensorsFile checkpoint)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        return plugins.TryGet($"{PluginName(checkpoint)}-attention", out var entry) && entry.Type.IsAssignableTo(typeof(ISharedStage));
    }

    private static string PluginName(SafeTensorsFile checkpoint) =>
        checkpoint.Metadata.TryGetValue(BackbonePluginKey, out var backbone) && backbone.Length > 0 ? backbone
            : throw new CheckpointException($"Checkpoint '{checkpoint.Path}' has no '{BackbonePluginKey}': it holds MoE layers only, not a language model.");

    public ModelSpec Spec { get; }

    public Device Device { get; }

    public BackboneOptions Options { get; }

    public int VocabSize { get; }

    /// <summary>Positions the model was trained on (<c>max_position_embeddings</c>).</summary>
    public int ContextLength { get; }

    /// <summary>Whether sessions can share this backbone (each keeps its KV caches in states of its own).</summary>
    public bool Shareable { get; }

    /// <summary>Whether attention weights are streamed layer by layer.</summary>
    public bool Streamed => _streamed is not null;

    /// <summary>Bytes of backbone weights that are device tensors now.</summary>
    public long DeviceBytes => _deviceBytes.Now;

    /// <summary>The most bytes of backbone weights that were device tensors at once.</summary>
    public long PeakDeviceBytes => _deviceBytes.Peak;

    /// <summary>Bytes of all the backbone's weights (what is resident when nothing is streamed).</summary>
    public long AllBytes => _resident.Sum(s => s.Descriptor.ParameterBytes) + (_hostAttention is null ? 0 : _attentionBytes.Sum());

    /// <summary>The streaming cache's figures (null when every block's attention is resident).</summary>
    public BackboneStreamingStats? Streaming => _streamed?.Stats() is { } s
        ? new BackboneStreamingStats(s.Accesses, s.Hits, s.Loads, s.BytesRead, s.PeakResidentExperts) : null;

    public Tensor Embed(Tensor ids)
    {
        lock (_compute)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return Scoped(() => _embed.Forward(ids));
        }
    }

    /// <summary>
    /// Block <paramref name="layer"/>'s attention for the session whose state of that block is <paramref name="state"/>
    /// (made here on its first use when the stage is an <see cref="ISharedStage"/>; null for stages that keep it themselves).
    /// </summary>
    public Tensor Attend(int layer, Tensor x, ref IDisposable? state)
    {
        lock (_compute)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _lastLayer = layer;
            if (_streamed is null)
            {
                var stage = _attention[layer]!;
                if (stage is not ISharedStage resident)
                {
                    return Scoped(() => stage.Forward(x));
                }
                var own = state ??= resident.CreateState();
                return Scoped(() => resident.Forward(x, own));
            }
            // The stage is pinned while it computes (the plugin detaches its parameters from any caller's dispose scope).
            using var lease = _streamed.Acquire(new ExpertId(layer, 0, "attention"));
            var streamed = (ISharedStage)Materialise(lease.Value, layer);
            var mine = state ??= streamed.CreateState();
            return Scoped(() => streamed.Forward(x, mine));
        }
    }

    public Tensor Norm(int layer, Tensor h)
    {
        lock (_compute)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return Scoped(() => _norms[layer].Forward(h));
        }
    }

    public Tensor Head(Tensor rows)
    {
        lock (_compute)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return Scoped(() => _head.Forward(rows));
        }
    }

    // A stage call inside a dispose scope: every temporary it makes is held (not left to the finalizer thread, which can
    // free one while libtorch still reads it: a chained call's intermediate is unreachable once its handle is passed on)
    // and freed when the call ends; the result is handed out.
    private static Tensor Scoped(Func<Tensor> call)
    {
        using var scope = NewDisposeScope();
        return call().MoveToOuterDisposeScope();
    }

    // Under the compute lock: the block's stage, made from its host weights on first use after a load.
    private IExpert Materialise(OffloadedMoeModel.ResidentExpert resident, int layer)
    {
        if (resident.Expert is { } made)
        {
            return made;
        }
        var expert = resident.Get(host =>
        {
            using var weights = host.ToTensors(Device);
            return Create("attention", layer, weights.Weights);
        });
        var bytes = _attentionBytes[layer];
        _deviceBytes.Add(bytes);
        resident.Released = () => _deviceBytes.Add(-bytes);
        return expert;
    }

    // A stage that stays on the device, made from the checkpoint's tensors.
    private IExpert Resident(string role, int layer, SafeTensorsFile checkpoint, params (string Local, string Name)[] names)
    {
        var loaded = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var (local, name) in names)
            {
                loaded[local] = checkpoint.Load(name, Device);
            }
            var stage = Create(role, layer, loaded);
            _resident.Add(stage);
            _deviceBytes.Add(stage.Descriptor.ParameterBytes);
            return stage;
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    private IExpert Create(string role, int layer, IReadOnlyDictionary<string, Tensor> weights) =>
        _plugins.Create<IExpert>($"{_backbone}-{role}", PluginKind.Expert, new PluginContext
        {
            Id = layer < 0 ? $"{Spec.Name}/{role}" : $"{Spec.Name}/{layer}/{role}",
            Layer = Math.Max(layer, 0),
            Device = Device,
            Settings = _settings,
            Weights = weights,
        }, _services);

    private static (string Local, string Name)[] Under(SafeTensorsFile checkpoint, string prefix, params string[] parts) => checkpoint.Tensors.Keys
        .Where(k => k.StartsWith(prefix, StringComparison.Ordinal) && parts.Any(p => k.AsSpan(prefix.Length).StartsWith(p, StringComparison.Ordinal)))
        .Select(k => (k[prefix.Length..], k)).ToArray();

    // A streamed block's weights in host memory, as float32 (the stages compute in float32).
    private static HostExpertWeights Host(SafeTensorsFile checkpoint, (string Local, string Name)[] names)
    {
        var weights = new Dictionary<string, (float[] Values, long[] Shape)>(StringComparer.Ordinal);
        long read = 0;
        foreach (var (local, name) in names)
        {
            using var t = checkpoint.Load(name, CPU);
            using var f = t.to_type(ScalarType.Float32);
            weights[local] = (f.data<float>().ToArray(), f.shape);
            read += t.numel() * t.ElementSize;
        }
        return new HostExpertWeights(weights, read);
    }

    /// <summary>Frees the weights; a call after this (a late session step) fails with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        lock (_compute)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            _streamed?.Dispose();
            foreach (var s in _resident)
            {
                _deviceBytes.Add(-s.Descriptor.ParameterBytes);
                s.Dispose();
            }
            _resident.Clear();
        }
    }
}
