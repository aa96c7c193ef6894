using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.TestPlugins.Good;

/// <summary>Multiplies its input by (expert index + 1): easy to check from outside.</summary>
[Expert("test-scale", Description = "test: y = (index + 1) * x")]
public sealed class ScaleExpert(PluginContext context) : IExpert
{
    private readonly float _factor = context.Index + 1;

    public ExpertDescriptor Descriptor { get; } = new("test-scale", ExpertKind.FeedForward, context.GetInt("hidden_size", 4), context.GetInt("hidden_size", 4), 0, "float32");

    public Tensor Forward(Tensor hiddenStates) => hiddenStates.mul(_factor);

    public void Dispose() { }
}

/// <summary>Routes every token to the first available expert with weight one.</summary>
[Router("test-first")]
public sealed class FirstAvailableRouter(PluginContext context) : IRouter
{
    public RouterDescriptor Descriptor { get; } = new("test-first", context.GetInt("num_local_experts", 4), 1);

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        var first = Enumerable.Range(0, available.Count).First(i => available[i]);
        var n = hiddenStates.shape[0];
        return new RoutingDecision(full(new long[] { n, 1 }, first, ScalarType.Int64), ones(new long[] { n, 1 }));
    }

    public void Dispose() { }
}
