namespace MoeGrains.Contracts;

/// <summary>The checks every tensor passes where it enters: shape, dtype, byte length and size, overflow-safe.</summary>
public static class TensorValidation
{
    /// <summary>Default largest tensor payload: 64 MiB, well below Orleans' 100 MB message limit.</summary>
    public const long DEFAULT_MAX_BYTES = 64L * 1024 * 1024;

    /// <summary>Most dimensions a wire tensor may have.</summary>
    public const int MAX_RANK = 8;

    /// <summary>Number of elements of <paramref name="shape"/>, or a <see cref="TensorValidationException"/> on negative dims or overflow.</summary>
    public static long ElementCount(ReadOnlySpan<long> shape)
    {
        if (shape.Length > MAX_RANK)
        {
            throw new TensorValidationException($"Tensor rank {shape.Length} exceeds the maximum of {MAX_RANK}.");
        }
        long count = 1;
        for (var i = 0; i < shape.Length; i++)
        {
            if (shape[i] < 0)
            {
                throw new TensorValidationException($"Dimension {i} of shape [{string.Join(", ", shape.ToArray())}] is negative.");
            }
            try
            {
                count = checked(count * shape[i]);
            }
            catch (OverflowException)
            {
                throw new TensorValidationException($"The element count of shape [{string.Join(", ", shape.ToArray())}] overflows a 64-bit integer.");
            }
        }
        return count;
    }

    /// <summary>Bytes the data of a tensor of this dtype and shape must occupy (overflow-safe).</summary>
    public static long ExpectedByteLength(TensorDType dtype, ReadOnlySpan<long> shape)
    {
        if (!TensorDTypes.IsDefined(dtype))
        {
            throw new TensorValidationException($"Unknown tensor dtype code {(int)dtype}.");
        }
        var count = ElementCount(shape);
        try
        {
            return checked(count * dtype.ElementSize());
        }
        catch (OverflowException)
        {
            throw new TensorValidationException($"The byte length of shape [{string.Join(", ", shape.ToArray())}] as {dtype} overflows a 64-bit integer.");
        }
    }

    /// <summary>Rows of an int8 tensor (one scale each): all dimensions but the last; a scalar or vector is one row.</summary>
    public static long ScaleRows(ReadOnlySpan<long> shape) => shape.Length <= 1 ? 1 : ElementCount(shape[..^1]);

    /// <summary>Checks dtype, shape, byte length, scales and size; throws a <see cref="TensorValidationException"/> naming the problem.</summary>
    public static void Validate(TensorDType dtype, ReadOnlySpan<long> shape, long dataLength, int? scaleCount, long maxBytes)
    {
        var expected = ExpectedByteLength(dtype, shape);
        if (expected > maxBytes)
        {
            throw new PayloadTooLargeException(expected, maxBytes);
        }
        if (expected != dataLength)
        {
            throw new TensorValidationException(
                $"Byte length mismatch for {dtype} tensor of shape [{string.Join(", ", shape.ToArray())}]: expected {expected}, got {dataLength}.");
        }
        if (dtype == TensorDType.Int8)
        {
            var rows = ScaleRows(shape);
            if (scaleCount is null || scaleCount.Value != rows)
            {
                throw new TensorValidationException($"An int8 tensor of shape [{string.Join(", ", shape.ToArray())}] needs {rows} scales, got {scaleCount ?? 0}.");
            }
        }
        else if (scaleCount is not null and not 0)
        {
            throw new TensorValidationException($"Only int8 tensors carry scales; a {dtype} tensor came with {scaleCount}.");
        }
    }
}
