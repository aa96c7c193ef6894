namespace MoeGrains.Contracts;

/// <summary>Element types a tensor may have on the wire.</summary>
public enum TensorDType : byte
{
    Float32 = 1,
    Float16 = 2,
    BFloat16 = 3,

    /// <summary>Symmetric int8 with one float32 scale per row (all dimensions but the last form the rows).</summary>
    Int8 = 4,
}

public static class TensorDTypes
{
    public static int ElementSize(this TensorDType dtype) => dtype switch
    {
        TensorDType.Float32 => 4,
        TensorDType.Float16 => 2,
        TensorDType.BFloat16 => 2,
        TensorDType.Int8 => 1,
        _ => throw new TensorValidationException($"Unknown tensor dtype code {(int)dtype}."),
    };

    public static bool IsDefined(TensorDType dtype) => dtype is TensorDType.Float32 or TensorDType.Float16 or TensorDType.BFloat16 or TensorDType.Int8;

    /// <summary>Parses <c>fp32</c>, <c>float32</c>, <c>fp16</c>, <c>bf16</c>, <c>int8</c> (case-insensitive).</summary>
    public static TensorDType Parse(string text) => text.Trim().ToLowerInvariant() switch
    {
        "fp32" or "float32" or "f32" => TensorDType.Float32,
        "fp16" or "float16" or "half" or "f16" => TensorDType.Float16,
        "bf16" or "bfloat16" => TensorDType.BFloat16,
        "int8" or "i8" or "q8" => TensorDType.Int8,
        _ => throw new ArgumentException($"Unknown wire dtype '{text}'; use fp32, fp16, bf16 or int8."),
    };
}
