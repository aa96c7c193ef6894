using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Serving;

/// <summary>
/// The attention half of one decoder block for one generation session: <c>x + attn(norm₁ x)</c> with the weights
/// <c>input_layernorm.weight</c> and <c>self_attn.{q,k,v,o}_proj.weight</c>. It keeps the session's KV cache: each call
/// takes the hidden states <c>[tokens, hidden]</c> of the tokens that follow those it has seen. As an
/// <see cref="ISharedStage"/>, one instance serves many sessions, each with its own cache (<see cref="CreateState"/>).
/// </summary>
[Expert("mixtral-attention", Description = "Mixtral backbone stage: attention with a KV cache per session")]
public sealed class MixtralAttentionStage : ISharedStage
{
    private readonly RmsNorm input_layernorm;
    private readonly MixtralAttention self_attn;
    private readonly LayerKvCache _cache;
    private readonly int _window;

    public MixtralAttentionStage(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var config = MixtralConfig.FromSettings(context.Settings);
        input_layernorm = StageWeights.Load(new RmsNorm(config.HiddenSize, config.RmsNormEps).to(context.Device), context, "input_layernorm.");
        self_attn = StageWeights.Load(new MixtralAttention(config).to(context.Device), context, "self_attn.");
        _window = config.MaxPositionEmbeddings;
        _cache = new LayerKvCache(_window);
        Descriptor = new ExpertDescriptor("mixtral-attention", ExpertKind.FeedForward, config.HiddenSize, config.HiddenSize,
            StageWeights.Bytes(input_layernorm) + StageWeights.Bytes(self_attn), "float32");
    }

    public ExpertDescriptor Descriptor { get; }

    /// <summary>Positions seen so far by the single-session <see cref="Forward(Tensor)"/> (shared use keeps them in each session's state).</summary>
    public long Position => _cache.Position;

    public Tensor Forward(Tensor hiddenStates) => Attend(hiddenStates, _cache);

    /// <summary>An empty KV cache for one session.</summary>
    public IDisposable CreateState() => new LayerKvCache(_window);

    public Tensor Forward(Tensor hiddenStates, IDisposable state) =>
        Attend(hiddenStates, state as LayerKvCache ?? throw new ArgumentException($"The state of a Mixtral attention stage is its {nameof(LayerKvCache)}, got {state?.GetType().Name ?? "null"}.", nameof(state)));

    private Tensor Attend(Tensor hiddenStates, LayerKvCache cache)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var x = hiddenStates.to_type(ScalarType.Float32).unsqueeze(0);
        return Scalars.Add(x, self_attn.forward(input_layernorm.forward(x), cache)).squeeze(0).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        _cache.Dispose();
        input_layernorm.Dispose();
        self_attn.Dispose();
    }
}
