using TorchSharp;

namespace MoeGrains.TestPlugins.Bad;

/// <summary>Has no public constructor: must be reported, not loaded.</summary>
[Expert("bad-no-ctor")]
public sealed class NoConstructorExpert : IExpert
{
    private NoConstructorExpert() { }

    public ExpertDescriptor Descriptor => throw new NotSupportedException();

    public torch.Tensor Forward(torch.Tensor hiddenStates) => hiddenStates;

    public void Dispose() { }
}

/// <summary>Throws in its constructor: creating it must be a clear error naming the plugin.</summary>
[Expert("bad-throws")]
public sealed class ThrowingExpert : IExpert
{
    public ThrowingExpert(PluginContext context) => throw new InvalidOperationException($"deliberate failure for {context.Id}");

    public ExpertDescriptor Descriptor => throw new NotSupportedException();

    public torch.Tensor Forward(torch.Tensor hiddenStates) => hiddenStates;

    public void Dispose() { }
}

/// <summary>Takes a name another plugin already has: a duplicate, reported.</summary>
[Expert("test-scale")]
public sealed class DuplicateNameExpert(PluginContext context) : IExpert
{
    public ExpertDescriptor Descriptor { get; } = new("test-scale", ExpertKind.FeedForward, 1, 1, 0, context.Id);

    public torch.Tensor Forward(torch.Tensor hiddenStates) => hiddenStates;

    public void Dispose() { }
}

/// <summary>Marked as an expert but implements no expert interface.</summary>
[Expert("bad-not-an-expert")]
public sealed class NotAnExpert;
