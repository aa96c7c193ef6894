using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>The decoder stack: <c>embed_tokens</c>, the <c>layers</c>, the final <c>norm</c>.</summary>
public sealed class MixtralModel : nn.Module
{
    private readonly Embedding embed_tokens;
    private readonly ModuleList<MixtralDecoderLayer> layers;
    private readonly RmsNorm norm;

    public MixtralModel(MixtralConfig config) : base(nameof(MixtralModel))
    {
        embed_tokens = nn.Embedding(config.VocabSize, config.HiddenSize);
        layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new MixtralDecoderLayer(config)).ToArray());
        norm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        RegisterComponents();
    }

    public Embedding EmbedTokens => embed_tokens;

    /// <summary>Hidden states after the final norm <c>[batch, tokens, hidden]</c>, and each layer's router logits.</summary>
    public (Tensor Hidden, Tensor[] RouterLogits) forward(Tensor inputIds, LayerKvCache[]? caches = null)
    {
        using var scope = NewDisposeScope();
        var x = embed_tokens.forward(inputIds);
        var logits = new Tensor[layers.Count];
        for (var i = 0; i < layers.Count; i++)
        {
            (x, logits[i]) = layers[i].forward(x, caches?[i]);
        }
        var hidden = norm.forward(x).MoveToOuterDisposeScope();
        foreach (var l in logits) l.MoveToOuterDisposeScope();
        return (hidden, logits);
    }
}
