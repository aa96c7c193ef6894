namespace MoeGrains;

/// <summary>The kinds of expert the framework hosts.</summary>
public enum ExpertKind
{
    FeedForward,
    Retriever,
    Diffusion,
}

/// <summary>Describes an expert: enough for placement (memory), dispatch (dimensions) and people (name).</summary>
/// <param name="Name">The plugin name, as given by <see cref="ExpertAttribute"/>.</param>
/// <param name="Kind">What the expert computes.</param>
/// <param name="InputDim">Width of the hidden states it accepts.</param>
/// <param name="OutputDim">Width of what it returns.</param>
/// <param name="ParameterBytes">Bytes its weights occupy on the device.</param>
/// <param name="DType">Element type of its weights, in PyTorch's words (<c>float32</c>, <c>bfloat16</c>, ...).</param>
public sealed record ExpertDescriptor(string Name, ExpertKind Kind, int InputDim, int OutputDim, long ParameterBytes, string DType)
{
    /// <summary>Optional human description (from <see cref="ExpertAttribute.Description"/>).</summary>
    public string? Description { get; init; }
}

/// <summary>Describes a router: its plugin name, how many experts it routes over, and its k.</summary>
public sealed record RouterDescriptor(string Name, int NumExperts, int TopK)
{
    public string? Description { get; init; }
}
