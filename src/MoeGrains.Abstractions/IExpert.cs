using TorchSharp;

namespace MoeGrains;

/// <summary>
/// A feed-forward expert: maps a batch of hidden states <c>[tokens, input_dim]</c> to <c>[tokens, output_dim]</c>.
/// Implementations are plain classes in a plugin assembly; a framework grain hosts them on its silo's device.
/// </summary>
public interface IExpert : IDisposable
{
    /// <summary>What this expert is: name, kind, dimensions, parameter bytes and dtype.</summary>
    ExpertDescriptor Descriptor { get; }

    /// <summary>Runs the expert on one batch. The caller owns the input; the returned tensor belongs to the caller.</summary>
    torch.Tensor Forward(torch.Tensor hiddenStates);
}
