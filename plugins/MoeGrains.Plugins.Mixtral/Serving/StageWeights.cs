using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral.Serving;

/// <summary>Fills a module's parameters from a plugin context's weights (names relative to the stage), detached from any dispose scope.</summary>
internal static class StageWeights
{
    public static T Load<T>(T module, PluginContext context, string prefix) where T : nn.Module
    {
        using var _ = no_grad();
        foreach (var (name, p) in module.named_parameters())
        {
            p.copy_(context.GetWeight(prefix + name, p.shape));
            p.requires_grad = false;
            // The stage outlives whatever dispose scope it was made in (a session step can make one).
            p.DetachFromDisposeScope();
        }
        foreach (var b in module.buffers())
        {
            b.DetachFromDisposeScope();
        }
        module.eval();
        return module;
    }

    public static long Bytes(nn.Module module) => module.parameters().Sum(p => p.numel() * p.ElementSize);
}
