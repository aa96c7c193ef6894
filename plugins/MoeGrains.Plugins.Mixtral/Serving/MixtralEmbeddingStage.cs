using TorchSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Serving;

/// <summary>
/// The token embedding of a served Mixtral model (<c>model.embed_tokens.weight</c>, here <c>weight</c>), hosted by the
/// framework's decoder session: token ids <c>[tokens]</c> (int64) to hidden states <c>[tokens, hidden]</c>.
/// </summary>
[Expert("mixtral-embed", Description = "Mixtral backbone stage: token embedding")]
public sealed class MixtralEmbeddingStage : IExpert
{
    private readonly Embedding embed_tokens;

    public MixtralEmbeddingStage(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var config = MixtralConfig.FromSettings(context.Settings);
        embed_tokens = StageWeights.Load(nn.Embedding(config.VocabSize, config.HiddenSize).to(context.Device), context, "");
        Descriptor = new ExpertDescriptor("mixtral-embed", ExpertKind.FeedForward, 1, config.HiddenSize, StageWeights.Bytes(embed_tokens), "float32");
    }

    public ExpertDescriptor Descriptor { get; }

    public Tensor Forward(Tensor hiddenStates)
    {
        using var _ = no_grad();
        // The scope holds the temporaries (a chained call's intermediate left to the finalizer can be freed mid-call).
        using var scope = NewDisposeScope();
        var vocab = embed_tokens.weight!.shape[0];
        var ids = hiddenStates.to_type(ScalarType.Int64).reshape(-1);
        if (ids.numel() > 0 && (ids.min().item<long>() < 0 || ids.max().item<long>() >= vocab))
        {
            throw new ArgumentOutOfRangeException(nameof(hiddenStates), $"Token ids must be in 0..{vocab - 1}.");
        }
        return embed_tokens.forward(ids).MoveToOuterDisposeScope();
    }

    public void Dispose() => embed_tokens.Dispose();
}
