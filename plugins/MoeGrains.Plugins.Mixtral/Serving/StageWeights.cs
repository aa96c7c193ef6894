using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Serving;

/// <summary>Fills a module's parameters from a plugin context's weights (names relative to the stage).</summary>
internal static class StageWeights
{
    public static T Load<T>(T module, PluginContext context, string prefix) where T : nn.Module
    {
        using var _ = no_grad();
        foreach (var (name, p) in module.named_parameters())
        {
            p.copy_(context.GetWeight(prefix + name, p.shape));
            p.requires_grad = false;
        }
        module.eval();
        return module;
    }

    public static long Bytes(nn.Module module) => module.parameters().Sum(p => p.numel() * p.ElementSize);
}
