using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>One decoder block: <c>h = x + attn(norm₁ x)</c>, then <c>h + moe(norm₂ h)</c> (pre-norm residuals).</summary>
public sealed class MixtralDecoderLayer : nn.Module
{
    private readonly RmsNorm input_layernorm;
    private readonly MixtralAttention self_attn;
    private readonly RmsNorm post_attention_layernorm;
    private readonly MixtralSparseMoeBlock block_sparse_moe;

    public MixtralDecoderLayer(MixtralConfig config, int layer = 0) : base(nameof(MixtralDecoderLayer))
    {
        input_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        self_attn = new MixtralAttention(config);
        post_attention_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        block_sparse_moe = new MixtralSparseMoeBlock(config, layer);
        RegisterComponents();
    }

    /// <summary>Runs the block on <paramref name="x"/> <c>[batch, tokens, hidden]</c>; returns its output and how its MoE block routed.</summary>
    public (Tensor Output, MoeRouting Routing) forward(Tensor x, LayerKvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        var h = Attend(x, cache);
        var flat = post_attention_layernorm.forward(h).reshape(-1, h.shape[^1]);
        var (moe, routing) = block_sparse_moe.forward(flat);
        routing.Logits.MoveToOuterDisposeScope();
        routing.Chosen.MoveToOuterDisposeScope();
        return (Scalars.Add(h, moe.view(h.shape)).MoveToOuterDisposeScope(), routing);
    }

    public MixtralSparseMoeBlock Moe => block_sparse_moe;

    /// <summary>The attention half: <c>x + attn(norm₁ x)</c>.</summary>
    public Tensor Attend(Tensor x, LayerKvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        return Scalars.Add(x, self_attn.forward(input_layernorm.forward(x), cache)).MoveToOuterDisposeScope();
    }
}
