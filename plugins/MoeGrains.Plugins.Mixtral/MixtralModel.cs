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
        layers = nn.ModuleList(Enumerable.Range(0, config.NumHiddenLayers).Select(i => new MixtralDecoderLayer(config, i)).ToArray());
        norm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        RegisterComponents();
    }

    public Embedding EmbedTokens => embed_tokens;

    public IReadOnlyList<MixtralDecoderLayer> Layers => [.. layers];

    /// <summary>Hidden states after the final norm <c>[batch, tokens, hidden]</c>, and how each layer routed.</summary>
    public (Tensor Hidden, MoeRouting[] Routing) forward(Tensor inputIds, LayerKvCache[]? caches = null)
    {
        using var scope = NewDisposeScope();
        var x = embed_tokens.forward(inputIds);
        var routing = new MoeRouting[layers.Count];
        for (var i = 0; i < layers.Count; i++)
        {
            (x, routing[i]) = layers[i].forward(x, caches?[i]);
        }
        var hidden = norm.forward(x).MoveToOuterDisposeScope();
        foreach (var r in routing)
        {
            r.Logits.MoveToOuterDisposeScope();
            r.Chosen.MoveToOuterDisposeScope();
        }
        return (hidden, routing);
    }
}
