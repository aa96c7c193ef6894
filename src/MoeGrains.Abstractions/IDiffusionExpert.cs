using TorchSharp;

namespace MoeGrains;

/// <summary>
/// A flow-matching diffusion expert: predicts the velocity of a noisy batch at time t. The flow is linear,
/// <c>x_t = (1 - t) x_0 + t ε</c> (t = 0 data, t = 1 noise), so the target velocity is <c>ε - x_0</c>.
/// </summary>
/// <remarks>
/// A trainable expert also implements <see cref="IStateDict"/> and returns its weights as
/// <see cref="TorchSharp.Modules.Parameter"/>s, which a trainer updates in place.
/// </remarks>
public interface IDiffusionExpert : IDisposable
{
    ExpertDescriptor Descriptor { get; }

    /// <summary>Predicts the flow for <paramref name="noisy"/> <c>[batch, channels, h, w]</c> at times <paramref name="time"/> <c>[batch]</c>.</summary>
    torch.Tensor PredictVelocity(torch.Tensor noisy, torch.Tensor time);

    /// <summary>Floating-point operations of one forward pass on one image (multiply and add counted as two).</summary>
    long FlopsPerImage => 0;
}

/// <summary>
/// The router of a decentralized diffusion model: a classifier of the partition a clean image came from, given its noisy
/// version and the time. Its softmax estimates <c>P(partition | x_t, t)</c>, the weights of the experts' flows.
/// </summary>
public interface IDiffusionRouter : IDisposable
{
    RouterDescriptor Descriptor { get; }

    /// <summary>Logits <c>[batch, experts]</c> for <paramref name="noisy"/> <c>[batch, channels, h, w]</c> at <paramref name="time"/> <c>[batch]</c>.</summary>
    torch.Tensor Logits(torch.Tensor noisy, torch.Tensor time);

    /// <summary>Floating-point operations of one forward pass on one image.</summary>
    long FlopsPerImage => 0;
}
