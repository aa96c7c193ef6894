using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Contracts;

/// <summary>
/// A tensor as it travels between silos and clients: dtype, shape and one contiguous byte buffer (little-endian), plus
/// one float32 scale per row for int8. Immutable: the codec copies the buffer once, and local calls pass it by reference.
/// </summary>
[Immutable]
public sealed class WireTensor
{
    private readonly long[] _shape;
    private readonly byte[] _data;
    private readonly float[]? _scales;

    /// <summary>Creates a wire tensor after checking dtype, shape, byte length and scales (no size limit).</summary>
    public WireTensor(TensorDType dtype, long[] shape, byte[] data, float[]? scales = null)
        : this(dtype, shape, data, scales, long.MaxValue)
    {
    }

    /// <summary>Creates a wire tensor, refusing one whose data exceeds <paramref name="maxBytes"/>.</summary>
    public WireTensor(TensorDType dtype, long[] shape, byte[] data, float[]? scales, long maxBytes)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(data);
        TensorValidation.Validate(dtype, shape, data.LongLength, scales?.Length, maxBytes);
        DType = dtype;
        _shape = (long[])shape.Clone();
        _data = data;
        _scales = scales;
    }

    public TensorDType DType { get; }

    public IReadOnlyList<long> Shape => _shape;

    public ReadOnlySpan<long> ShapeSpan => _shape;

    public ReadOnlyMemory<byte> Data => _data;

    public ReadOnlySpan<float> Scales => _scales;

    public long ElementCount => TensorValidation.ElementCount(_shape);

    /// <summary>Bytes this tensor occupies on the wire (data, scales and header).</summary>
    public long WireBytes => _data.LongLength + (_scales?.LongLength ?? 0) * 4 + 16 + _shape.LongLength * 8;

    internal byte[] RawData => _data;

    internal float[]? RawScales => _scales;

    /// <summary>Copies a TorchSharp tensor (any device) into a wire tensor of the given dtype.</summary>
    public static WireTensor FromTensor(Tensor tensor, TensorDType dtype = TensorDType.Float32, long maxBytes = long.MaxValue)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var shape = tensor.shape;
        var expected = TensorValidation.ExpectedByteLength(dtype, shape);
        if (expected > maxBytes)
        {
            throw new PayloadTooLargeException(expected, maxBytes);
        }
        using var scope = NewDisposeScope();
        var cpu = tensor.detach().cpu();
        if (dtype == TensorDType.Int8)
        {
            var rows = TensorValidation.ScaleRows(shape);
            var last = shape.Length == 0 ? 1 : shape[^1];
            var x = cpu.to_type(ScalarType.Float32).reshape(rows, last);
            if (rows == 0 || last == 0)
            {
                return new WireTensor(dtype, shape, [], new float[rows], maxBytes);
            }
            // Scalars held across the calls (a temporary one can be finalized while libtorch reads it).
            using TorchSharp.Scalar top = 127f, tiny = 1e-12f, low = -127f, high = 127f;
            var scale = x.abs().amax(new long[] { 1 }).div(top).clamp_min(tiny);
            var q = x.div(scale.unsqueeze(1)).round().clamp(low, high).to_type(ScalarType.Int8).contiguous();
            return new WireTensor(dtype, shape, q.bytes.ToArray(), scale.contiguous().data<float>().ToArray(), maxBytes);
        }
        var converted = cpu.to_type(ToScalarType(dtype)).contiguous();
        return new WireTensor(dtype, shape, converted.bytes.ToArray(), null, maxBytes);
    }

    /// <summary>
    /// Builds a TorchSharp tensor on <paramref name="device"/> (CPU when null). Int8 is dequantised; other dtypes are
    /// converted to <paramref name="asType"/> (float32 by default; pass null to keep the wire dtype).
    /// </summary>
    public Tensor ToTensor(Device? device = null, ScalarType? asType = ScalarType.Float32)
    {
        // Synchronous on purpose: a dispose scope must never stay open across an await.
        using var scope = NewDisposeScope();
        Tensor result;
        if (DType == TensorDType.Int8)
        {
            var rows = TensorValidation.ScaleRows(_shape);
            var last = _shape.Length == 0 ? 1 : _shape[^1];
            var q = empty(new long[] { rows, last }, ScalarType.Int8);
            if (_data.Length > 0)
            {
                q.bytes = _data;
            }
            var s = tensor(_scales!, new long[] { rows, 1 });
            result = q.to_type(ScalarType.Float32).mul(s).reshape(_shape);
            if (asType is { } t && t != ScalarType.Float32)
            {
                result = result.to_type(t);
            }
        }
        else
        {
            result = empty(_shape, ToScalarType(DType));
            if (_data.Length > 0)
            {
                result.bytes = _data;
            }
            if (asType is { } t && t != result.dtype)
            {
                result = result.to_type(t);
            }
        }
        if (device is not null && device.type != DeviceType.CPU)
        {
            result = result.to(device);
        }
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Reads the values as float32 (dequantising int8, widening fp16/bf16), for checks and tests.</summary>
    public float[] ToFloatArray()
    {
        if (DType == TensorDType.Float32)
        {
            return MemoryMarshal.Cast<byte, float>(_data).ToArray();
        }
        using var t = ToTensor();
        return t.data<float>().ToArray();
    }

    public static ScalarType ToScalarType(TensorDType dtype) => dtype switch
    {
        TensorDType.Float32 => ScalarType.Float32,
        TensorDType.Float16 => ScalarType.Float16,
        TensorDType.BFloat16 => ScalarType.BFloat16,
        TensorDType.Int8 => ScalarType.Int8,
        _ => throw new TensorValidationException($"Unknown tensor dtype code {(int)dtype}."),
    };

    public override string ToString() => $"{DType}[{string.Join(", ", _shape)}] ({_data.LongLength} bytes)";
}
