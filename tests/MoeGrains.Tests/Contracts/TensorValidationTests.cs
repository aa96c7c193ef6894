using MoeGrains.Contracts;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Contracts;

public sealed class TensorValidationTests
{
    [Fact]
    public void Byte_length_mismatch_names_expected_and_actual()
    {
        var e = Assert.Throws<TensorValidationException>(() => new WireTensor(TensorDType.Float32, [2, 5], new byte[36]));
        Assert.Contains("expected 40, got 36", e.Message);
    }

    [Fact]
    public void Shape_product_overflow_is_refused()
    {
        var e = Assert.Throws<TensorValidationException>(() => new WireTensor(TensorDType.Float32, [long.MaxValue / 2, 4], new byte[8]));
        Assert.Contains("overflows", e.Message);
    }

    [Fact]
    public void Element_size_overflow_is_refused()
    {
        var e = Assert.Throws<TensorValidationException>(() => TensorValidation.ExpectedByteLength(TensorDType.Float32, [long.MaxValue / 3]));
        Assert.Contains("overflows", e.Message);
    }

    [Fact]
    public void Negative_dimensions_are_refused()
    {
        var e = Assert.Throws<TensorValidationException>(() => new WireTensor(TensorDType.Float16, [3, -1], new byte[0]));
        Assert.Contains("negative", e.Message);
    }

    [Fact]
    public void Unknown_dtype_is_refused()
    {
        var e = Assert.Throws<TensorValidationException>(() => new WireTensor((TensorDType)42, [1], new byte[4]));
        Assert.Contains("Unknown tensor dtype", e.Message);
    }

    [Fact]
    public void Oversize_tensors_are_refused_before_anything_is_copied()
    {
        using var x = zeros(1024, 1024); // 4 MiB as float32
        var e = Assert.Throws<PayloadTooLargeException>(() => WireTensor.FromTensor(x, TensorDType.Float32, maxBytes: 1024 * 1024));
        Assert.Equal(4L * 1024 * 1024, e.Bytes);
        Assert.Equal(1024L * 1024, e.MaxBytes);
    }

    [Fact]
    public void Int8_needs_one_scale_per_row()
    {
        var e = Assert.Throws<TensorValidationException>(() => new WireTensor(TensorDType.Int8, [3, 4], new byte[12], [1f, 1f]));
        Assert.Contains("needs 3 scales, got 2", e.Message);
        var f = Assert.Throws<TensorValidationException>(() => new WireTensor(TensorDType.Float32, [1], new byte[4], [1f]));
        Assert.Contains("Only int8", f.Message);
    }

    [Fact]
    public void Rank_above_the_limit_is_refused()
    {
        var e = Assert.Throws<TensorValidationException>(() => TensorValidation.ElementCount(new long[9]));
        Assert.Contains("rank 9", e.Message);
    }
}
