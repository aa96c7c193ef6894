using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>One decoder block: <c>h = x + attn(norm₁ x)</c>, then <c>h + moe(norm₂ h)</c> (pre-norm residuals).</summary>
public sealed class MixtralDecoderLayer : nn.Module
{
    private readonly RmsNorm input_layernorm;
    private readonly MixtralAttention self_attn;
    private readonly RmsNorm post_attention_layernorm;
    private readonly MixtralSparseMoeBlock block_sparse_moe;

    public MixtralDecoderLayer(MixtralConfig config) : base(nameof(MixtralDecoderLayer))
    {
        input_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        self_attn = new MixtralAttention(config);
        post_attention_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        block_sparse_moe = new MixtralSparseMoeBlock(config);
        RegisterComponents();
    }

    /// <summary>Runs the block on <paramref name="x"/> <c>[batch, tokens, hidden]</c>; returns its output and the router logits.</summary>
    public (Tensor Output, Tensor RouterLogits) forward(Tensor x, LayerKvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        var h = Attend(x, cache);
        var flat = post_attention_layernorm.forward(h).reshape(-1, h.shape[^1]);
        var (moe, logits) = block_sparse_moe.forward(flat);
        return (h.add(moe.view(h.shape)).MoveToOuterDisposeScope(), logits.MoveToOuterDisposeScope());
    }

    /// <summary>The attention half: <c>x + attn(norm₁ x)</c>.</summary>
    public Tensor Attend(Tensor x, LayerKvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        return x.add(self_attn.forward(input_layernorm.forward(x), cache)).MoveToOuterDisposeScope();
    }
}
