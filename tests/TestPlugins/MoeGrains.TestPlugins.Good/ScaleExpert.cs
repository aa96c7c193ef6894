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

/// <summary>
/// Misbehaves by index, for reliability tests: 2 throws, 3 returns NaN, 4 hangs for 10 s, 5 is slow (100 ms);
/// the others compute (index + 1) * x.
/// </summary>
[Expert("test-faulty")]
public sealed class FaultyExpert(PluginContext context) : IExpert
{
    public ExpertDescriptor Descriptor { get; } = new("test-faulty", ExpertKind.FeedForward, context.GetInt("hidden_size"), context.GetInt("hidden_size"), 0, "float32");

    public Tensor Forward(Tensor hiddenStates)
    {
        switch (context.Index)
        {
            case 2:
                throw new InvalidOperationException("injected failure");
            case 3:
                return hiddenStates.mul(float.NaN);
            case 4:
                Thread.Sleep(10_000);
                break;
            case 5:
                Thread.Sleep(100);
                break;
        }
        return hiddenStates.mul(context.Index + 1);
    }

    public void Dispose() { }
}

/// <summary>Sends every token to every available expert with equal weights.</summary>
[Router("test-uniform")]
public sealed class UniformRouter(PluginContext context) : IRouter
{
    public RouterDescriptor Descriptor { get; } = new("test-uniform", context.GetInt("num_local_experts"), context.GetInt("num_local_experts"));

    public RoutingDecision Route(Tensor hiddenStates, ExpertAvailability available)
    {
        var chosen = Enumerable.Range(0, available.Count).Where(i => available[i]).Select(i => (long)i).ToArray();
        var n = hiddenStates.shape[0];
        return new RoutingDecision(tensor(chosen).expand(n, chosen.Length).contiguous(), full(new long[] { n, chosen.Length }, 1f / chosen.Length));
    }

    public void Dispose() { }
}
