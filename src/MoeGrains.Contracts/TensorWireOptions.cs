namespace MoeGrains.Contracts;

/// <summary>Limits for tensors crossing the wire; bound from configuration section <c>MoeGrains:Wire</c>.</summary>
public sealed class TensorWireOptions
{
    /// <summary>Largest tensor data accepted or sent, in bytes (default <see cref="TensorValidation.DEFAULT_MAX_BYTES"/>).
    /// Orleans tears down a whole connection above its 100 MB message limit, so stay well below it.</summary>
    public long MaxTensorBytes { get; set; } = TensorValidation.DEFAULT_MAX_BYTES;

    /// <summary>The dtype hidden states are sent in between silos (default float32).</summary>
    public TensorDType HiddenDType { get; set; } = TensorDType.Float32;
}
