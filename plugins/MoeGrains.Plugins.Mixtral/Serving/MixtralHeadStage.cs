using TorchSharp.Modules;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Serving;

/// <summary>The final <c>norm.weight</c> and <c>lm_head.weight</c>: hidden states <c>[tokens, hidden]</c> to next-token logits <c>[tokens, vocab]</c>.</summary>
[Expert("mixtral-head", Description = "Mixtral backbone stage: final norm and output projection")]
public sealed class MixtralHeadStage : IExpert
{
    private readonly RmsNorm norm;
    private readonly Linear lm_head;

    public MixtralHeadStage(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var config = MixtralConfig.FromSettings(context.Settings);
        norm = StageWeights.Load(new RmsNorm(config.HiddenSize, config.RmsNormEps).to(context.Device), context, "norm.");
        lm_head = StageWeights.Load(nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false).to(context.Device), context, "lm_head.");
        Descriptor = new ExpertDescriptor("mixtral-head", ExpertKind.FeedForward, config.HiddenSize, config.VocabSize,
            StageWeights.Bytes(norm) + StageWeights.Bytes(lm_head), "float32");
    }

    public ExpertDescriptor Descriptor { get; }

    public Tensor Forward(Tensor hiddenStates)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return lm_head.forward(norm.forward(hiddenStates.to_type(ScalarType.Float32))).MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
        norm.Dispose();
        lm_head.Dispose();
    }
}
