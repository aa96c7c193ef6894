using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Options;
using Orleans.Serialization.Buffers;
using Orleans.Serialization.Cloning;
using Orleans.Serialization.Codecs;
using Orleans.Serialization.Serializers;
using Orleans.Serialization.WireProtocol;

namespace MoeGrains.Contracts;

/// <summary>
/// The Orleans codec for <see cref="WireTensor"/>: one length-prefixed field holding a small header (version, dtype,
/// rank, dims, scale count), the scales and the data buffer, written in one block each, never element by element.
/// Every read is validated (dtype, shape overflow, byte length, size limit) before the buffer is allocated.
/// </summary>
[RegisterSerializer]
public sealed class WireTensorCodec : IFieldCodec<WireTensor>
{
    private const byte FormatVersion = 1;
    private readonly long _maxBytes;

    public WireTensorCodec(IOptions<TensorWireOptions>? options = null)
    {
        _maxBytes = options?.Value.MaxTensorBytes ?? TensorValidation.DEFAULT_MAX_BYTES;
    }

    public void WriteField<TBufferWriter>(ref Writer<TBufferWriter> writer, uint fieldIdDelta, [System.Diagnostics.CodeAnalysis.AllowNull] Type expectedType, [System.Diagnostics.CodeAnalysis.AllowNull] WireTensor value)
        where TBufferWriter : IBufferWriter<byte>
    {
        if (ReferenceCodec.TryWriteReferenceField(ref writer, fieldIdDelta, expectedType, value))
        {
            return;
        }
        ArgumentNullException.ThrowIfNull(value);
        var data = value.RawData;
        if (data.LongLength > _maxBytes)
        {
            // Refuse here, on the sending side, so that one oversize tensor fails one call, not the connection.
            throw new PayloadTooLargeException(data.LongLength, _maxBytes);
        }
        var scales = value.RawScales ?? [];
        var rank = value.ShapeSpan.Length;
        var headerLength = 3 + rank * 8 + 4;
        var total = (long)headerLength + scales.Length * 4L + data.LongLength;
        writer.WriteFieldHeader(fieldIdDelta, expectedType, typeof(WireTensor), WireType.LengthPrefixed);
        writer.WriteVarUInt32(checked((uint)total));
        Span<byte> header = stackalloc byte[headerLength];
        header[0] = FormatVersion;
        header[1] = (byte)value.DType;
        header[2] = (byte)rank;
        for (var i = 0; i < rank; i++)
        {
            BinaryPrimitives.WriteInt64LittleEndian(header.Slice(3 + i * 8, 8), value.ShapeSpan[i]);
        }
        BinaryPrimitives.WriteInt32LittleEndian(header.Slice(3 + rank * 8, 4), scales.Length);
        writer.Write(header);
        if (scales.Length > 0)
        {
            writer.Write(MemoryMarshal.AsBytes(scales.AsSpan()));
        }
        writer.Write(data);
    }

    public WireTensor ReadValue<TInput>(ref Reader<TInput> reader, Field field)
    {
        if (field.WireType == WireType.Reference)
        {
            return ReferenceCodec.ReadReference<WireTensor, TInput>(ref reader, field)!;
        }
        field.EnsureWireType(WireType.LengthPrefixed);
        var placeholder = ReferenceCodec.CreateRecordPlaceholder(reader.Session);
        var total = reader.ReadVarUInt32();
        Span<byte> fixedHeader = stackalloc byte[3];
        reader.ReadBytes(fixedHeader);
        if (fixedHeader[0] != FormatVersion)
        {
            throw new TensorValidationException($"Unknown wire tensor format version {fixedHeader[0]}.");
        }
        var dtype = (TensorDType)fixedHeader[1];
        int rank = fixedHeader[2];
        if (rank > TensorValidation.MAX_RANK)
        {
            throw new TensorValidationException($"Tensor rank {rank} exceeds the maximum of {TensorValidation.MAX_RANK}.");
        }
        Span<byte> dims = stackalloc byte[rank * 8 + 4];
        reader.ReadBytes(dims);
        var shape = new long[rank];
        for (var i = 0; i < rank; i++)
        {
            shape[i] = BinaryPrimitives.ReadInt64LittleEndian(dims.Slice(i * 8, 8));
        }
        var scaleCount = BinaryPrimitives.ReadInt32LittleEndian(dims.Slice(rank * 8, 4));
        var expected = TensorValidation.ExpectedByteLength(dtype, shape);
        if (expected > _maxBytes)
        {
            throw new PayloadTooLargeException(expected, _maxBytes);
        }
        var headerLength = 3L + rank * 8 + 4;
        if (scaleCount < 0 || headerLength + scaleCount * 4L + expected != total)
        {
            throw new TensorValidationException(
                $"Byte length mismatch for {dtype} tensor of shape [{string.Join(", ", shape)}]: expected {headerLength + Math.Max(scaleCount, 0) * 4L + expected}, got {total}.");
        }
        float[]? scales = null;
        if (scaleCount > 0 || dtype == TensorDType.Int8)
        {
            scales = new float[scaleCount];
            reader.ReadBytes(MemoryMarshal.AsBytes(scales.AsSpan()));
        }
        var data = reader.ReadBytes((uint)expected);
        var result = new WireTensor(dtype, shape, data, scales, _maxBytes);
        ReferenceCodec.RecordObject(reader.Session, result, placeholder);
        return result;
    }
}

/// <summary>Wire tensors are immutable, so a copy is the same instance.</summary>
[RegisterCopier]
public sealed class WireTensorCopier : IDeepCopier<WireTensor>
{
    public WireTensor DeepCopy(WireTensor? input, CopyContext context) => input!;
}
