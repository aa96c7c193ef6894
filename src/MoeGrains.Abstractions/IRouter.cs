using TorchSharp;

namespace MoeGrains;

/// <summary>
/// Chooses, for each token of a batch, the experts it goes to and their weights, among the experts that are available.
/// </summary>
public interface IRouter : IDisposable
{
    RouterDescriptor Descriptor { get; }

    /// <summary>
    /// Routes a batch of hidden states <c>[tokens, d_model]</c>. Unavailable experts must never be chosen.
    /// </summary>
    RoutingDecision Route(torch.Tensor hiddenStates, ExpertAvailability available);
}
