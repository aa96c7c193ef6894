using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Models;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Generation;

/// <summary>What one mixture-of-experts layer step returned: its output and how many (token, expert) pairs it computed.</summary>
public sealed record MoeLayerAnswer(Tensor Output, int ExpertSlots)
{
    /// <summary>Experts computed for each token of the step, when the caller knows the routing (in process); null otherwise.</summary>
    public int[]? TokenExperts { get; init; }
}

/// <summary>Runs one mixture-of-experts layer on hidden states <c>[tokens, d_model]</c>: the in-process dispatcher or the layer grain.</summary>
public delegate Task<MoeLayerAnswer> MoeLayerCallAsync(int layer, Tensor hidden, CancellationToken cancellationToken);

/// <summary>
/// One generation session of a decoder checkpoint in Mixtral's layout. The backbone (token embedding, each block's
/// attention with its KV cache and its norm, the output head) runs here, as plugin stages named by the checkpoint's
/// <c>moegrains.backbone_plugin</c> (<c>NAME-embed</c>, <c>NAME-attention</c>, <c>NAME-norm</c>, <c>NAME-head</c>); each
/// block's experts run through <see cref="MoeLayerCallAsync"/>, so the same session code serves in process and over
/// the cluster. Tensor work goes through the given lane; no dispose scope is held across an await.
/// </summary>
public sealed class DecoderSession : IDisposable
{
    public const string BackbonePluginKey = DecoderBackbone.BackbonePluginKey;

    private readonly DecoderBackbone _backbone;
    private readonly bool _ownsBackbone;
    private readonly IDisposable?[] _states;
    private readonly MoeLayerCallAsync _moe;
    private readonly IComputeLane _lane;
    private readonly IDisposable? _owned;
    private bool _disposed;

    private DecoderSession(DecoderBackbone backbone, bool ownsBackbone, MoeLayerCallAsync moe, IComputeLane lane, IDisposable? owned)
    {
        (_backbone, _ownsBackbone, _moe, _lane, _owned) = (backbone, ownsBackbone, moe, lane, owned);
        Spec = backbone.Spec;
        VocabSize = backbone.VocabSize;
        ContextLength = backbone.ContextLength;
        _states = new IDisposable?[Spec.Layers];
        ExpertSlots = new long[Spec.Layers];
    }

    public ModelSpec Spec { get; }

    public int VocabSize { get; }

    /// <summary>Positions the model was trained on (<c>max_position_embeddings</c>): the longest prompt accepted.</summary>
    public int ContextLength { get; }

    /// <summary>The backbone weights this session runs on (its own, or shared with other sessions).</summary>
    public DecoderBackbone Backbone => _backbone;

    /// <summary>Tokens fed so far.</summary>
    public long Position { get; private set; }

    /// <summary>(token, expert) pairs computed so far, per layer: divided by <see cref="Position"/>, the experts per token.</summary>
    public long[] ExpertSlots { get; private set; } = [];

    /// <summary>Experts computed for each fed token, summed over the layers, where every layer's answer said (in process); else empty.</summary>
    public IReadOnlyList<int> TokenExperts => _tokenExperts;

    private readonly List<int> _tokenExperts = [];

    /// <summary>Called with each block's input (on the lane, before its attention) in <see cref="AppendAsync"/>: a dispatcher's context log.</summary>
    public Action<int, Tensor>? LayerInputs { get; set; }

    /// <summary>Creates the session with a backbone of its own, loaded from the checkpoint (synchronous: call it on the device lane).</summary>
    public static DecoderSession Create(PluginCatalog plugins, ModelSpec spec, SafeTensorsFile checkpoint, Device device, IServiceProvider services,
        MoeLayerCallAsync moe, IComputeLane? lane = null, IDisposable? owned = null)
    {
        var backbone = DecoderBackbone.Load(plugins, spec, checkpoint, device, services);
        return new DecoderSession(backbone, ownsBackbone: true, moe, lane ?? InlineLane.Instance, owned);
    }

    /// <summary>
    /// Creates a session on a backbone shared with other sessions (it keeps only its KV caches); the backbone outlives it.
    /// </summary>
    public static DecoderSession Create(DecoderBackbone backbone, MoeLayerCallAsync moe, IComputeLane? lane = null, IDisposable? owned = null)
    {
        ArgumentNullException.ThrowIfNull(backbone);
        if (!backbone.Shareable)
        {
            throw new ArgumentException($"The backbone of model '{backbone.Spec.Name}' cannot be shared: its attention stages keep their KV cache inside ({nameof(ISharedStage)} not implemented).", nameof(backbone));
        }
        return new DecoderSession(backbone, ownsBackbone: false, moe, lane ?? InlineLane.Instance, owned);
    }

    /// <summary>
    /// A session whose experts run in this process (<see cref="LocalMoeModel"/>): the reference for the cluster. With
    /// <paramref name="router"/>, each layer routes with that router plugin instead of the checkpoint's.
    /// </summary>
    public static DecoderSession InProcess(PluginCatalog plugins, string checkpointPath, IServiceProvider services, string name = "default", string? router = null)
    {
        var local = new LocalMoeModel(plugins, checkpointPath, services, CPU, name);
        var routers = new Dictionary<int, IRouter>();
        var owned = new Owned(local, routers);
        try
        {
            var file = SafeTensorsFile.Open(checkpointPath);
            MoeLayerCallAsync moe = async (layer, hidden, ct) =>
            {
                IRouter r;
                if (router is null)
                {
                    r = local.Router(layer);
                }
                else if (!routers.TryGetValue(layer, out r!))
                {
                    routers[layer] = r = PluginFactory.CreateRouter(plugins, local.Spec, file, layer, CPU, services, router);
                }
                var routing = Routing.Route(r, hidden, Routing.Availability(local.Spec.Experts, null));
                var result = await MoeLayerRunner.RunAsync(hidden, routing, local.Spec.Experts, local.Spec.DModel, (e, batch, _) =>
                {
                    using var noGrad = no_grad();
                    return Task.FromResult(new ExpertAnswer(local.Expert(layer, e).Forward(batch), "local", 0, 0));
                }, 1, TimeSpan.FromMinutes(5), ct).ConfigureAwait(false);
                var perToken = new int[routing.Tokens];
                for (var i = 0; i < routing.Experts.Length; i++)
                {
                    if (routing.Experts[i] >= 0) perToken[i / routing.K]++;
                }
                return Answer(result) with { TokenExperts = perToken };
            };
            return Create(plugins, local.Spec, file, CPU, services, moe, InlineLane.Instance, owned);
        }
        catch
        {
            owned.Dispose();
            throw;
        }
    }

    private static MoeLayerAnswer Answer(MoeLayerOutput result) => new(result.Output, result.Calls.Sum(c => c.Tokens));

    private sealed class Owned(LocalMoeModel local, Dictionary<int, IRouter> routers) : IDisposable
    {
        public void Dispose()
        {
            foreach (var r in routers.Values) r.Dispose();
            local.Dispose();
        }
    }

    // The steps of a forward pass, for dispatchers that run the backbone on several silos (context-coherent dispatch).
    // Synchronous: call them on the device lane. ForwardAsync is made of the same steps.

    /// <summary>Checks token ids and embeds them: <c>[tokens, d_model]</c>.</summary>
    public Tensor Embed(long[] tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.Length == 0)
        {
            throw new GenerationRequestException("No tokens to feed.");
        }
        if (tokens.Any(t => t < 0 || t >= VocabSize))
        {
            throw new GenerationRequestException($"Token ids must be in 0..{VocabSize - 1}.");
        }
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var ids = tensor(tokens);
        return _backbone.Embed(ids);
    }

    /// <summary>Block <paramref name="layer"/>'s attention (appending to its KV cache) and its norm: the residual stream and the MoE input.</summary>
    public (Tensor Hidden, Tensor Normed) Attend(int layer, Tensor x)
    {
        // A closed session has no KV cache left: it must not start an empty one.
        ObjectDisposedException.ThrowIf(_disposed, this);
        var h = _backbone.Attend(layer, x, ref _states[layer]);
        try
        {
            return (h, _backbone.Norm(layer, h));
        }
        catch
        {
            h.Dispose();
            throw;
        }
    }

    /// <summary>The output head: next-token logits after the last row, or after each row.</summary>
    public float[][] Head(Tensor x, bool allPositions)
    {
        using var scope = NewDisposeScope();
        var rows = allPositions ? x : x.narrow(0, x.shape[0] - 1, 1);
        var flat = _backbone.Head(rows).to_type(ScalarType.Float32).cpu().data<float>().ToArray();
        return flat.Chunk(VocabSize).ToArray();
    }

    /// <summary>Counts tokens fed by a dispatcher that drives the steps itself.</summary>
    public void Advance(int tokens, long[]? expertSlots = null)
    {
        Position += tokens;
        if (expertSlots is not null)
        {
            for (var l = 0; l < ExpertSlots.Length; l++) ExpertSlots[l] += expertSlots[l];
        }
    }

    /// <summary>Feeds <paramref name="tokens"/> after those already fed; returns the next-token logits after the last one.</summary>
    public async Task<float[]> AppendAsync(long[] tokens, CancellationToken cancellationToken = default) =>
        (await ForwardAsync(tokens, allPositions: false, cancellationToken))[0];

    /// <summary>Feeds <paramref name="tokens"/>; returns the next-token logits after each of them (for evaluation).</summary>
    public Task<float[][]> AppendAllAsync(long[] tokens, CancellationToken cancellationToken = default) =>
        ForwardAsync(tokens, allPositions: true, cancellationToken);

    private async Task<float[][]> ForwardAsync(long[] tokens, bool allPositions, CancellationToken cancellationToken)
    {
        var x = await _lane.RunAsync(() => Embed(tokens), cancellationToken);
        var tokenExperts = new int[tokens.Length];
        var perToken = true;
        try
        {
            for (var layer = 0; layer < Spec.Layers; layer++)
            {
                var input = x;
                var (h, normed) = await _lane.RunAsync(() =>
                {
                    LayerInputs?.Invoke(layer, input);
                    return Attend(layer, input);
                }, cancellationToken);
                x.Dispose();
                x = h;
                Tensor moe;
                try
                {
                    var answer = await _moe(layer, normed, cancellationToken);
                    moe = answer.Output;
                    ExpertSlots[layer] += answer.ExpertSlots;
                    if (answer.TokenExperts is { } te && te.Length == tokenExperts.Length)
                    {
                        for (var t = 0; t < te.Length; t++) tokenExperts[t] += te[t];
                    }
                    else
                    {
                        perToken = false;
                    }
                }
                finally
                {
                    normed.Dispose();
                }
                using (moe)
                {
                    x = await _lane.RunAsync(() => Scalars.Add(h, moe), cancellationToken);
                }
                h.Dispose();
            }
            var last = x;
            var logits = await _lane.RunAsync(() => Head(last, allPositions), cancellationToken);
            Position += tokens.Length;
            if (perToken) _tokenExperts.AddRange(tokenExperts);
            return logits;
        }
        finally
        {
            x.Dispose();
        }
    }

    public void Dispose()
    {
        _disposed = true;
        foreach (var state in _states) state?.Dispose();
        Array.Clear(_states);
        if (_ownsBackbone) _backbone.Dispose();
        _owned?.Dispose();
    }
}
