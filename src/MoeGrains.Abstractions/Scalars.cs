using TorchSharp;

namespace MoeGrains;

/// <summary>
/// Scalars that live as long as the process. TorchSharp hands a <see cref="Scalar"/> to libtorch by its raw handle, and a
/// temporary one (an implicit <c>1</c> such as <c>Tensor.add(Tensor)</c>'s alpha, a literal passed to
/// <c>masked_fill</c>) may be finalized by the GC's finalizer thread while libtorch still reads it, when another thread's
/// allocation starts a collection mid-call: a c10 <c>Scalar</c> assert or a segfault. Pass these instead, or hold a
/// <c>using</c> scalar across the call.
/// </summary>
public static class Scalars
{
    public static readonly Scalar One = 1;

    public static readonly Scalar MinusOne = -1L;

    public static readonly Scalar Zero = 0f;

    public static readonly Scalar NegativeInfinity = float.NegativeInfinity;

    /// <summary><paramref name="a"/> + <paramref name="b"/>, with the alpha held alive.</summary>
    public static torch.Tensor Add(torch.Tensor a, torch.Tensor b) => a.add(b, One);
}
