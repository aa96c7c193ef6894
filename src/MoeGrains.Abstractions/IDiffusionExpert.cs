using TorchSharp;

namespace MoeGrains;

/// <summary>A flow-matching diffusion expert: predicts the velocity of a noisy batch at time t.</summary>
public interface IDiffusionExpert : IDisposable
{
    ExpertDescriptor Descriptor { get; }

    /// <summary>Predicts the flow for <paramref name="noisy"/> <c>[batch, channels, h, w]</c> at times <paramref name="time"/> <c>[batch]</c>.</summary>
    torch.Tensor PredictVelocity(torch.Tensor noisy, torch.Tensor time);
}
