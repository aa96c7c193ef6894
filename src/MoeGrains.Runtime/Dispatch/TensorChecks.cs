using static TorchSharp.torch;

namespace MoeGrains.Dispatch;

internal static class TensorChecks
{
    /// <summary>True when every element is finite (no NaN, no ±Inf).</summary>
    public static bool AllFinite(Tensor x)
    {
        if (x.numel() == 0)
        {
            return true;
        }
        using var scope = NewDisposeScope();
        return x.isfinite().all().item<bool>();
    }
}
