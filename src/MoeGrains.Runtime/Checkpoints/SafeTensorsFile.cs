using System.Security.Cryptography;
using System.Text.Json;
using MoeGrains.Contracts;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Checkpoints;

/// <summary>One tensor's entry in a safetensors header.</summary>
public sealed record SafeTensorEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>
/// A safetensors file (8-byte little-endian header length, a JSON header, then the data), validated when opened:
/// header length, JSON, dtypes, shapes × element size = byte ranges (overflow-safe), offsets inside the data and not
/// overlapping. Tensors are read on demand by offset, each checked against its SHA-256 when the file carries them
/// (metadata key <see cref="ChecksumKey"/>), so a corrupt tensor fails only whoever loads it.
/// </summary>
public sealed class SafeTensorsFile
{
    /// <summary>Metadata key holding a JSON object of tensor name → SHA-256 (hex) of its bytes.</summary>
    public const string ChecksumKey = "moegrains.sha256";

    /// <summary>Largest header accepted (100 MB, as the reference implementation).</summary>
    public const long MAX_HEADER_BYTES = 100_000_000;

    private readonly Dictionary<string, string> _checksums;

    private SafeTensorsFile(string path, long dataStart, Dictionary<string, SafeTensorEntry> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        DataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
        _checksums = metadata.TryGetValue(ChecksumKey, out var json)
            ? JsonSerializer.Deserialize<Dictionary<string, string>>(json) ?? []
            : [];
    }

    public string Path { get; }

    public long DataStart { get; }

    public IReadOnlyDictionary<string, SafeTensorEntry> Tensors { get; }

    public IReadOnlyDictionary<string, string> Metadata { get; }

    public bool HasChecksums => _checksums.Count > 0;

    public static int ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => -1,
    };

    public static ScalarType ToScalarType(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64,
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new CheckpointException($"Unsupported safetensors dtype '{dtype}'."),
    };

    public static string FromScalarType(ScalarType type) => type switch
    {
        ScalarType.Float64 => "F64",
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new CheckpointException($"Cannot store {type} in safetensors."),
    };

    /// <summary>Opens and validates a safetensors file; throws <see cref="CheckpointException"/> naming the file and problem.</summary>
    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path))
        {
            throw new CheckpointException($"Checkpoint '{path}' does not exist.");
        }
        using var stream = File.OpenRead(path);
        var fileLength = stream.Length;
        if (fileLength < 8)
        {
            throw new CheckpointException($"Checkpoint '{path}' is truncated: {fileLength} bytes, less than the 8-byte header length.");
        }
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        var headerLength = BitConverter.ToUInt64(lengthBytes);
        if (headerLength > MAX_HEADER_BYTES || (long)headerLength > fileLength - 8)
        {
            throw new CheckpointException($"Checkpoint '{path}': header length {headerLength} is out of range for a file of {fileLength} bytes.");
        }
        var header = new byte[headerLength];
        stream.ReadExactly(header);
        var dataStart = 8 + (long)headerLength;
        var dataLength = fileLength - dataStart;
        var tensors = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(header);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointException($"Checkpoint '{path}': the header is not a JSON object.");
            }
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        metadata[m.Name] = m.Value.GetString() ?? "";
                    }
                    continue;
                }
                tensors[prop.Name] = ParseEntry(path, prop.Name, prop.Value, dataLength);
            }
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"Checkpoint '{path}': the header is not valid JSON ({e.Message}).");
        }
        catch (InvalidOperationException e)
        {
            throw new CheckpointException($"Checkpoint '{path}': the header has an unexpected structure ({e.Message}).");
        }
        var ordered = tensors.Values.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        for (var i = 1; i < ordered.Count; i++)
        {
            if (ordered[i].Begin < ordered[i - 1].End)
            {
                throw new CheckpointException($"Checkpoint '{path}': tensors '{ordered[i - 1].Name}' and '{ordered[i].Name}' overlap.");
            }
        }
        return new SafeTensorsFile(path, dataStart, tensors, metadata);
    }

    private static SafeTensorEntry ParseEntry(string path, string name, JsonElement e, long dataLength)
    {
        var dtype = e.GetProperty("dtype").GetString() ?? "";
        var size = ElementSize(dtype);
        if (size < 0)
        {
            throw new CheckpointException($"Checkpoint '{path}': tensor '{name}' has unknown dtype '{dtype}'.");
        }
        var shape = e.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray();
        var offsets = e.GetProperty("data_offsets").EnumerateArray().Select(d => d.GetInt64()).ToArray();
        if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataLength)
        {
            throw new CheckpointException(
                $"Checkpoint '{path}': tensor '{name}' has data offsets [{string.Join(", ", offsets)}] outside the {dataLength} data bytes.");
        }
        long expected;
        try
        {
            expected = checked(TensorValidation.ElementCount(shape) * size);
        }
        catch (Exception ex) when (ex is OverflowException or TensorValidationException)
        {
            throw new CheckpointException($"Checkpoint '{path}': tensor '{name}' has an invalid shape [{string.Join(", ", shape)}] ({ex.Message}).");
        }
        if (expected != offsets[1] - offsets[0])
        {
            throw new CheckpointException(
                $"Checkpoint '{path}': tensor '{name}' ({dtype} [{string.Join(", ", shape)}]) needs {expected} bytes but its offsets span {offsets[1] - offsets[0]}.");
        }
        return new SafeTensorEntry(name, dtype, shape, offsets[0], offsets[1]);
    }

    /// <summary>Reads one tensor's bytes, checking its checksum when the file carries one.</summary>
    public byte[] ReadBytes(string name)
    {
        if (!Tensors.TryGetValue(name, out var entry))
        {
            throw new CheckpointException($"Checkpoint '{Path}' has no tensor '{name}'.");
        }
        var bytes = new byte[entry.ByteLength];
        using (var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.RandomAccess))
        {
            if (stream.Length < DataStart + entry.End)
            {
                throw new CheckpointException($"Checkpoint '{Path}' is truncated: tensor '{name}' ends past the end of the file.");
            }
            stream.Position = DataStart + entry.Begin;
            stream.ReadExactly(bytes);
        }
        if (_checksums.TryGetValue(name, out var expected))
        {
            var actual = Convert.ToHexStringLower(SHA256.HashData(bytes));
            if (!string.Equals(actual, expected, StringComparison.OrdinalIgnoreCase))
            {
                throw new CheckpointException($"Checkpoint '{Path}': tensor '{name}' fails its SHA-256 check (the file is corrupt).");
            }
        }
        return bytes;
    }

    /// <summary>Loads one tensor onto <paramref name="device"/> (CPU when null).</summary>
    public Tensor Load(string name, Device? device = null)
    {
        var entry = Tensors.TryGetValue(name, out var e) ? e : throw new CheckpointException($"Checkpoint '{Path}' has no tensor '{name}'.");
        var bytes = ReadBytes(name);
        var t = empty(entry.Shape, ToScalarType(entry.DType));
        if (bytes.Length > 0)
        {
            t.bytes = bytes;
        }
        if (device is not null && device.type != DeviceType.CPU)
        {
            using (t)
            {
                return t.to(device);
            }
        }
        return t;
    }

    /// <summary>Loads every tensor whose name starts with <paramref name="prefix"/>, keyed by the rest of the name.</summary>
    public Dictionary<string, Tensor> LoadPrefix(string prefix, Device? device = null)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var name in Tensors.Keys.Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            {
                result[name[prefix.Length..]] = Load(name, device);
            }
        }
        catch
        {
            foreach (var t in result.Values)
            {
                t.Dispose();
            }
            throw;
        }
        return result;
    }

    /// <summary>Writes tensors (any device) and metadata as a safetensors file, with a SHA-256 per tensor.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = new List<(string Name, string DType, long[] Shape, byte[] Bytes)>();
        foreach (var (name, tensor) in tensors)
        {
            using var cpu = tensor.detach().cpu().contiguous();
            items.Add((name, FromScalarType(cpu.dtype), cpu.shape, cpu.bytes.ToArray()));
        }
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>())
        {
            [ChecksumKey] = JsonSerializer.Serialize(items.ToDictionary(i => i.Name, i => Convert.ToHexStringLower(SHA256.HashData(i.Bytes)))),
        };
        using var ms = new MemoryStream();
        using (var json = new Utf8JsonWriter(ms))
        {
            json.WriteStartObject();
            json.WriteStartObject("__metadata__");
            foreach (var (k, v) in meta.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                json.WriteString(k, v);
            }
            json.WriteEndObject();
            long offset = 0;
            foreach (var item in items)
            {
                json.WriteStartObject(item.Name);
                json.WriteString("dtype", item.DType);
                json.WriteStartArray("shape");
                foreach (var d in item.Shape)
                {
                    json.WriteNumberValue(d);
                }
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + item.Bytes.LongLength);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += item.Bytes.LongLength;
            }
            json.WriteEndObject();
        }
        var header = ms.ToArray().ToList();
        while (header.Count % 8 != 0)
        {
            header.Add((byte)' ');
        }
        var directory = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (!string.IsNullOrEmpty(directory))
        {
            Directory.CreateDirectory(directory);
        }
        var temp = path + $".{Environment.ProcessId}.tmp"; // two processes writing the same file do not share a temporary
        using (var file = File.Create(temp))
        {
            file.Write(BitConverter.GetBytes((ulong)header.Count));
            file.Write(header.ToArray());
            foreach (var item in items)
            {
                file.Write(item.Bytes);
            }
        }
        File.Move(temp, path, overwrite: true);
    }

    public override string ToString() => $"{Path} ({Tensors.Count} tensors)";
}
