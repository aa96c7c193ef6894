using TorchSharp;

namespace MoeGrains;

/// <summary>
/// A router's choice for a batch: <see cref="Experts"/> <c>[tokens, k]</c> (int64, <c>-1</c> for an unused slot, so
/// that routers with a per-token number of experts fit) and <see cref="Weights"/> <c>[tokens, k]</c> (float32, zero
/// in unused slots). <see cref="AuxiliaryLoss"/> is the router's training loss term, when it has one.
/// </summary>
public sealed class RoutingDecision : IDisposable
{
    public RoutingDecision(torch.Tensor experts, torch.Tensor weights, torch.Tensor? auxiliaryLoss = null)
    {
        ArgumentNullException.ThrowIfNull(experts);
        ArgumentNullException.ThrowIfNull(weights);
        if (experts.dim() != 2 || weights.dim() != 2 || experts.shape[0] != weights.shape[0] || experts.shape[1] != weights.shape[1])
        {
            throw new ArgumentException(
                $"experts and weights must both be [tokens, k]; got [{string.Join(", ", experts.shape)}] and [{string.Join(", ", weights.shape)}]");
        }
        Experts = experts;
        Weights = weights;
        AuxiliaryLoss = auxiliaryLoss;
    }

    public torch.Tensor Experts { get; }

    public torch.Tensor Weights { get; }

    public torch.Tensor? AuxiliaryLoss { get; }

    public long Tokens => Experts.shape[0];

    public long K => Experts.shape[1];

    public void Dispose()
    {
        Experts.Dispose();
        Weights.Dispose();
        AuxiliaryLoss?.Dispose();
    }
}
