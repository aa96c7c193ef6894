using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Serving;

/// <summary>A block's <c>post_attention_layernorm</c> (weight <c>weight</c>): the input of its mixture-of-experts layer.</summary>
[Expert("mixtral-norm", Description = "Mixtral backbone stage: RMS norm before the experts")]
public sealed class MixtralNormStage : IExpert
{
    private readonly RmsNorm norm;

    public MixtralNormStage(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var config = MixtralConfig.FromSettings(context.Settings);
        norm = StageWeights.Load(new RmsNorm(config.HiddenSize, config.RmsNormEps).to(context.Device), context, "");
        Descriptor = new ExpertDescriptor("mixtral-norm", ExpertKind.FeedForward, config.HiddenSize, config.HiddenSize, StageWeights.Bytes(norm), "float32");
    }

    public ExpertDescriptor Descriptor { get; }

    public Tensor Forward(Tensor hiddenStates)
    {
        using var _ = no_grad();
        return norm.forward(hiddenStates);
    }

    public void Dispose() => norm.Dispose();
}
