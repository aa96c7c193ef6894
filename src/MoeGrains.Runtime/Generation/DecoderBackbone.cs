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
/// modules are shared; on a silo the device lane orders the calls anyway), and the streaming cache pins a block's stage
/// while it computes.
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
    private long _deviceBytes, _peakDeviceBytes;
    private int _lastLayer;
    private readonly Lock _compute = new();

    private DecoderBackbone(PluginCatalog plugins, ModelSpec spec, SafeTensorsFile checkpoint, Device device, IServiceProvider services, BackboneOptions options)
    {
        (_plugins, Spec, Device, _services, Options) = (plugins, spec, device, services, options);
        if (!checkpoint.Metadata.TryGetValue(BackbonePluginKey, out var backbone) || backbone.Length == 0)
        {
            throw new CheckpointException($"Checkpoint '{checkpoint.Path}' has no '{BackbonePluginKey}': it holds MoE layers only, not a language model.");
        }
        _backbone = backbone;
        _settings = checkpoint.Metadata;
        ContextLength = checkpoint.Metadata.TryGetValue("max_position_embeddings", out var c) && int.TryParse(c, out var n) && n > 0
            ? n : throw new CheckpointException($"Checkpoint '{checkpoint.Path}': metadata 'max_position_embeddings' is missing.");
        if (options.ResidentAttentionLayers < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.ResidentAttentionLayers, "ResidentAttentionLayers must not be negative.");
        }
        _attention = new IExpert?[spec.Layers];
        _norms = new IExpert[spec.Layers];
        _attentionBytes = new long[spec.Layers];
        try
        {
            _embed = Resident(Stage("embed", -1, Load(checkpoint, ("weight", "model.embed_tokens.weight"))));
            var streamed = options.ResidentAttentionLayers > 0 && options.ResidentAttentionLayers < spec.Layers;
            if (streamed)
            {
                _hostAttention = new HostExpertWeights[spec.Layers];
            }
            for (var layer = 0; layer < spec.Layers; layer++)
            {
                var names = Under(checkpoint, $"model.layers.{layer}.", "input_layernorm.", "self_attn.");
                if (streamed)
                {
                    _hostAttention![layer] = Host(checkpoint, names);
                    _attentionBytes[layer] = _hostAttention[layer].Weights.Values.Sum(w => (long)w.Values.Length * sizeof(float));
                }
                else
                {
                    var stage = Resident(Stage("attention", layer, Load(checkpoint, names)));
                    _attention[layer] = stage;
                    _attentionBytes[layer] = stage.Descriptor.ParameterBytes;
                }
                _norms[layer] = Resident(Stage("norm", layer, Load(checkpoint, ("weight", $"model.layers.{layer}.post_attention_layernorm.weight"))));
            }
            _head = Resident(Stage("head", -1, Load(checkpoint, ("norm.weight", "model.norm.weight"),
                ("lm_head.weight", checkpoint.Tensors.ContainsKey("lm_head.weight") ? "lm_head.weight" : "model.embed_tokens.weight"))));
            VocabSize = _head.Descriptor.OutputDim;
            if (streamed)
            {
                // The first block's stage tells whether stages can be remade without losing a session's KV cache.
                using (var probe = Stage("attention", 0, _hostAttention![0]))
                {
                    if (probe is not ISharedStage)
                    {
                        throw new ArgumentException($"Streaming attention weights needs '{_backbone}-attention' stages that keep their KV cache apart ({nameof(ISharedStage)}); this one does not.", nameof(options));
                    }
                }
                Shareable = true;
                _streamed = new DeviceExpertCache<OffloadedMoeModel.ResidentExpert>(new ExpertCacheBudget(options.ResidentAttentionLayers), ExpertCachePolicy.Predictive,
                    id => _attentionBytes[id.Layer], id => (new OffloadedMoeModel.ResidentExpert(_hostAttention[id.Layer]), _attentionBytes[id.Layer]))
                {
                    ReportsMetrics = false,
                    // Blocks run in order, cycling: the block whose turn is farthest from the one running now goes first.
                    NextUse = id => (id.Layer - Volatile.Read(ref _lastLayer) + spec.Layers) % spec.Layers,
                };
            }
            else
            {
                Shareable = _attention.All(a => a is ISharedStage);
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
    public long DeviceBytes => Interlocked.Read(ref _deviceBytes);

    /// <summary>The most bytes of backbone weights that were device tensors at once.</summary>
    public long PeakDeviceBytes => Interlocked.Read(ref _peakDeviceBytes);

    /// <summary>Bytes of all the backbone's weights (what is resident when nothing is streamed).</summary>
    public long AllBytes => _resident.Where(s => !_attention.Contains(s)).Sum(s => s.Descriptor.ParameterBytes) + _attentionBytes.Sum();

    /// <summary>The streaming cache's figures (null when every block's attention is resident).</summary>
    public BackboneStreamingStats? Streaming => _streamed?.Stats() is { } s
        ? new BackboneStreamingStats(s.Accesses, s.Hits, s.Loads, s.BytesRead, s.PeakResidentExperts) : null;

    public Tensor Embed(Tensor ids)
    {
        lock (_compute) return Scoped(() => _embed.Forward(ids));
    }

    // A stage call inside a dispose scope: every temporary it makes is held (not left to the finalizer thread, which can
    // free one while libtorch still reads it: a chained call's intermediate is unreachable once its handle is passed on)
    // and freed when the call ends; the result is handed out.
    private static Tensor Scoped(Func<Tensor> call)
    {
        using var scope = NewDisposeScope();
        return call().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Block <paramref name="layer"/>'s attention for the session whose state of that block is <paramref name="state"/>
    /// (made here on its first use when the stage is an <see cref="ISharedStage"/>; null for stages that keep it themselves).
    /// </summary>
    public Tensor Attend(int layer, Tensor x, ref IDisposable? state)
    {
        lock (_compute)
        {
            Volatile.Write(ref _lastLayer, layer);
            if (_streamed is null)
            {
                var stage = _attention[layer]!;
                if (stage is not ISharedStage resident)
                {
                    return Scoped(() => stage.Forward(x));
                }
                state ??= resident.CreateState();
                return Forward(resident, x, state);
            }
            // The stage is made (outside any dispose scope: its modules keep their parameters) and pinned while it computes.
            using var lease = _streamed.Acquire(new ExpertId(layer, 0, "attention"));
            var streamed = (ISharedStage)Materialise(lease.Value, layer);
            state ??= streamed.CreateState();
            return Forward(streamed, x, state);
        }
    }

    private static Tensor Forward(ISharedStage stage, Tensor x, IDisposable state)
    {
        using var scope = NewDisposeScope();
        return stage.Forward(x, state).MoveToOuterDisposeScope();
    }

    public Tensor Norm(int layer, Tensor h)
    {
        lock (_compute) return Scoped(() => _norms[layer].Forward(h));
    }

    public Tensor Head(Tensor rows)
    {
        lock (_compute) return Scoped(() => _head.Forward(rows));
    }

    // Sessions that reach a block together share its lease: the first makes the stage, the others wait for it.
    private IExpert Materialise(OffloadedMoeModel.ResidentExpert resident, int layer)
    {
        lock (resident)
        {
            if (resident.Expert is { } made)
            {
                return made;
            }
            var expert = resident.Get(host => Stage("attention", layer, host));
            var bytes = _attentionBytes[layer];
            AddDeviceBytes(bytes);
            resident.Released = () => AddDeviceBytes(-bytes);
            return expert;
        }
    }

    private void AddDeviceBytes(long bytes)
    {
        var now = Interlocked.Add(ref _deviceBytes, bytes);
        long peak;
        while (now > (peak = Interlocked.Read(ref _peakDeviceBytes)) && Interlocked.CompareExchange(ref _peakDeviceBytes, now, peak) != peak)
        {
        }
    }

    private IExpert Resident(IExpert stage)
    {
        _resident.Add(stage);
        AddDeviceBytes(stage.Descriptor.ParameterBytes);
        return stage;
    }

    private static (string Local, string Name)[] Under(SafeTensorsFile checkpoint, string prefix, params string[] parts) => checkpoint.Tensors.Keys
        .Where(k => k.StartsWith(prefix, StringComparison.Ordinal) && parts.Any(p => k.AsSpan(prefix.Length).StartsWith(p, StringComparison.Ordinal)))
        .Select(k => (k[prefix.Length..], k)).ToArray();

    private static HostExpertWeights Load(SafeTensorsFile checkpoint, params (string Local, string Name)[] names) => Host(checkpoint, names);

    // The weights in host memory, as float32 (the stages compute in float32).
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

    private IExpert Stage(string role, int layer, HostExpertWeights host)
    {
        // No dispose scope here: the stages' modules keep the parameters they make.
        using var weights = host.ToTensors(Device);
        return _plugins.Create<IExpert>($"{_backbone}-{role}", PluginKind.Expert, new PluginContext
        {
            Id = layer < 0 ? $"{Spec.Name}/{role}" : $"{Spec.Name}/{layer}/{role}",
            Layer = Math.Max(layer, 0),
            Device = Device,
            Settings = _settings,
            Weights = weights.Weights,
        }, _services);
    }

    public void Dispose()
    {
        _streamed?.Dispose();
        foreach (var s in _resident) s.Dispose();
        _resident.Clear();
    }
}
