using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// Causal multi-head attention with rotary positions and grouped key/value heads (Mixtral's <c>MixtralAttention</c>):
/// <c>q_proj</c>, <c>k_proj</c>, <c>v_proj</c>, <c>o_proj</c>, no biases.
/// </summary>
public sealed class MixtralAttention : nn.Module
{
    private readonly Linear q_proj;
    private readonly Linear k_proj;
    private readonly Linear v_proj;
    private readonly Linear o_proj;
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;
    private readonly double _theta;

    public MixtralAttention(MixtralConfig config) : base(nameof(MixtralAttention))
    {
        _heads = config.NumAttentionHeads;
        _kvHeads = config.NumKeyValueHeads;
        _headDim = config.HeadDim;
        _theta = config.RopeTheta;
        q_proj = nn.Linear(config.HiddenSize, _heads * _headDim, hasBias: false);
        k_proj = nn.Linear(config.HiddenSize, _kvHeads * _headDim, hasBias: false);
        v_proj = nn.Linear(config.HiddenSize, _kvHeads * _headDim, hasBias: false);
        o_proj = nn.Linear(_heads * _headDim, config.HiddenSize, hasBias: false);
        RegisterComponents();
    }

    /// <summary>
    /// Attends <paramref name="x"/> <c>[batch, tokens, hidden]</c>. Without a cache the tokens sit at positions 0..T-1;
    /// with one they follow the tokens it holds, and their keys and values are added to it.
    /// </summary>
    public Tensor forward(Tensor x, LayerKvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        var (batch, tokens) = (x.shape[0], x.shape[1]);
        var start = cache?.Position ?? 0;
        var q = q_proj.forward(x).view(batch, tokens, _heads, _headDim).transpose(1, 2);
        var k = k_proj.forward(x).view(batch, tokens, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.forward(x).view(batch, tokens, _kvHeads, _headDim).transpose(1, 2);
        q = RotaryEmbedding.Apply(q, start, _theta);
        k = RotaryEmbedding.Apply(k, start, _theta);
        if (cache is not null)
        {
            (k, v) = cache.Append(k, v);
        }
        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, 1);
            v = v.repeat_interleave(_heads / _kvHeads, 1);
        }
        var keys = k.shape[2];
        Tensor y;
        if (keys == tokens)
        {
            y = nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, tokens > 1);
        }
        else if (tokens == 1)
        {
            y = nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, false);
        }
        else
        {
            // New tokens after cached ones: token i sees every cached key and the new ones up to itself.
            var mask = ones(tokens, keys, ScalarType.Bool, x.device).tril(keys - tokens);
            y = nn.functional.scaled_dot_product_attention(q, k, v, mask, 0.0, false);
        }
        y = y.transpose(1, 2).reshape(batch, tokens, _heads * _headDim);
        return o_proj.forward(y).MoveToOuterDisposeScope();
    }
}
