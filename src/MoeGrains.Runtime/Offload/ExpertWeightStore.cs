using System.Text.Json;
using System.Text.Json.Serialization;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Models;
using static TorchSharp.torch;

namespace MoeGrains.Offload;

/// <summary>One expert's entry in an <see cref="ExpertWeightStore"/>'s manifest.</summary>
public sealed record ExpertStoreEntry(int Layer, int Expert, string File, int Bits, long FileBytes, long DeviceBytes);

/// <summary>One expert's weights as loaded from the store: float32 tensors under the plugin's names, and the bytes read.</summary>
public sealed class LoadedExpertWeights(Dictionary<string, Tensor> weights, long bytesRead) : IDisposable
{
    public Dictionary<string, Tensor> Weights { get; } = weights;

    public long BytesRead { get; } = bytesRead;

    public void Dispose()
    {
        foreach (var t in Weights.Values) t.Dispose();
    }
}

/// <summary>
/// One expert's weights read into host memory (float32 values and shapes), before any tensor exists: reading and
/// dequantising touch no TorchSharp state, so they can run on any thread while the device computes.
/// </summary>
public sealed class HostExpertWeights(Dictionary<string, (float[] Values, long[] Shape)> weights, long bytesRead)
{
    public IReadOnlyDictionary<string, (float[] Values, long[] Shape)> Weights { get; } = weights;

    public long BytesRead { get; } = bytesRead;

    /// <summary>The tensors on <paramref name="device"/> (the caller disposes them).</summary>
    public LoadedExpertWeights ToTensors(Device? device = null)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, (values, shape)) in Weights)
        {
            // Copied into storage libtorch owns (no pinned managed array behind the tensor).
            var t = empty(shape, ScalarType.Float32).DetachFromDisposeScope();
            if (values.Length > 0)
            {
                t.bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
            }
            if (device is not null && device.type != TorchSharp.DeviceType.CPU)
            {
                var moved = t.to(device);
                t.Dispose();
                t = moved;
            }
            result[name] = t;
        }
        return new LoadedExpertWeights(result, BytesRead);
    }
}

/// <summary>
/// Experts' weights on storage, one safetensors file per expert (<c>layer{L}/expert{E}.safetensors</c>, each tensor with
/// its SHA-256) under a manifest (<c>store.json</c>). An expert is stored at 32 bits (as trained), or group-quantised at
/// 8 or 4 bits (<see cref="GroupQuantizer"/>: codes plus one float scale per group), chosen per expert, and dequantised
/// to float32 when it is loaded. Each load opens and validates only that expert's file, so a corrupt or missing file
/// fails that expert alone with a <see cref="CheckpointException"/> naming it.
/// </summary>
public sealed class ExpertWeightStore
{
    public const string ManifestFile = "store.json";
    public const string Format = "moegrains-expert-store/1";
    public const string BitsKey = "moegrains.offload.bits";
    public const string GroupKey = "moegrains.offload.group_size";
    public const string ShapesKey = "moegrains.offload.shapes";
    public const int DEFAULT_GROUP_SIZE = 64;

    private readonly Dictionary<(int, int), ExpertStoreEntry> _entries;

    private ExpertWeightStore(string folder, ModelSpec spec, int groupSize, IEnumerable<ExpertStoreEntry> entries)
    {
        Folder = folder;
        Spec = spec;
        GroupSize = groupSize;
        _entries = entries.ToDictionary(e => (e.Layer, e.Expert));
    }

    public string Folder { get; }

    public ModelSpec Spec { get; }

    public int GroupSize { get; }

    public IEnumerable<ExpertStoreEntry> Entries => _entries.Values.OrderBy(e => e.Layer).ThenBy(e => e.Expert);

    public int Count => _entries.Count;

    /// <summary>Float32 bytes of every expert (what an all-resident device holds).</summary>
    public long TotalDeviceBytes => _entries.Values.Sum(e => e.DeviceBytes);

    public ExpertStoreEntry Entry(int layer, int expert) =>
        _entries.TryGetValue((layer, expert), out var e)
            ? e
            : throw new UnknownExpertException($"Expert store '{Folder}' has no expert {expert} in layer {layer} ({Spec.Layers} layers x {Spec.Experts} experts).");

    /// <summary>
    /// Writes the experts of <paramref name="checkpoint"/> as a store in <paramref name="folder"/>, each at the bit-width
    /// <paramref name="bits"/> gives it (32 by default; 8 or 4 group-quantised), and returns the opened store.
    /// </summary>
    public static ExpertWeightStore Write(SafeTensorsFile checkpoint, ModelSpec spec, string folder, Func<int, int, int>? bits = null, int groupSize = DEFAULT_GROUP_SIZE)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(groupSize, 2);
        Directory.CreateDirectory(folder);
        var entries = new List<ExpertStoreEntry>();
        for (var layer = 0; layer < spec.Layers; layer++)
        {
            for (var expert = 0; expert < spec.Experts; expert++)
            {
                var b = bits?.Invoke(layer, expert) ?? 32;
                if (b is not (32 or 8 or 4))
                {
                    throw new ArgumentException($"Expert {layer}/{expert}: bit-width must be 32, 8 or 4, got {b}.", nameof(bits));
                }
                var weights = checkpoint.LoadPrefix(ModelSpec.ExpertPrefix(layer, expert));
                try
                {
                    if (weights.Count == 0)
                    {
                        throw new CheckpointException($"Checkpoint '{checkpoint.Path}' has no tensors for expert {expert} of layer {layer}.");
                    }
                    var relative = $"layer{layer}/expert{expert}.safetensors";
                    var path = Path.Combine(folder, relative);
                    var deviceBytes = weights.Values.Sum(t => t.NumberOfElements * 4);
                    WriteExpert(path, weights, b, groupSize, layer, expert);
                    var stored = SafeTensorsFile.Open(path);
                    entries.Add(new ExpertStoreEntry(layer, expert, relative, b, stored.Tensors.Values.Sum(t => t.ByteLength), deviceBytes));
                }
                finally
                {
                    foreach (var t in weights.Values) t.Dispose();
                }
            }
        }
        var manifest = new Manifest(Format, spec.Name, new Dictionary<string, string>(spec.Settings), groupSize, entries);
        var manifestPath = Path.Combine(folder, ManifestFile);
        File.WriteAllText(manifestPath + ".tmp", JsonSerializer.Serialize(manifest, JsonOptions));
        File.Move(manifestPath + ".tmp", manifestPath, overwrite: true);
        return Open(folder);
    }

    private static void WriteExpert(string path, Dictionary<string, Tensor> weights, int bits, int groupSize, int layer, int expert)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        var shapes = new Dictionary<string, long[]>(StringComparer.Ordinal);
        try
        {
            foreach (var (name, weight) in weights.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                using var w = weight.to_type(ScalarType.Float32).contiguous();
                shapes[name] = w.shape;
                if (bits == 32)
                {
                    tensors.Add(new(name, w.clone()));
                    continue;
                }
                var (rows, cols) = Matrix(w.shape);
                var (codes, scales) = GroupQuantizer.Quantize(w.data<float>().ToArray(), rows, cols, bits, groupSize);
                var g = GroupQuantizer.GroupFor(cols, groupSize);
                var codeTensor = empty(new long[] { rows, bits == 8 ? cols : cols / 2 }, bits == 8 ? ScalarType.Int8 : ScalarType.Byte);
                codeTensor.bytes = codes;
                tensors.Add(new($"{name}.q{bits}", codeTensor));
                var scaleTensor = empty(new long[] { rows, cols / g }, ScalarType.Float32);
                scaleTensor.bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(scales.AsSpan()).ToArray();
                tensors.Add(new($"{name}.scale", scaleTensor));
            }
            SafeTensorsFile.Write(path, tensors, new Dictionary<string, string>
            {
                [BitsKey] = bits.ToString(System.Globalization.CultureInfo.InvariantCulture),
                [GroupKey] = groupSize.ToString(System.Globalization.CultureInfo.InvariantCulture),
                [ShapesKey] = JsonSerializer.Serialize(shapes),
                ["moegrains.offload.expert"] = $"{layer}/{expert}",
            });
        }
        finally
        {
            foreach (var t in tensors) t.Value.Dispose();
        }
    }

    private static (int Rows, int Cols) Matrix(long[] shape) => shape.Length switch
    {
        0 => (1, 1),
        1 => (1, checked((int)shape[0])),
        _ => (checked((int)(shape[..^1].Aggregate(1L, (a, b) => a * b))), checked((int)shape[^1])),
    };

    /// <summary>Opens a store, validating its manifest (format, sizes, every expert listed once, files present).</summary>
    public static ExpertWeightStore Open(string folder)
    {
        var path = Path.Combine(folder, ManifestFile);
        if (!File.Exists(path))
        {
            throw new CheckpointException($"Expert store '{folder}' has no {ManifestFile}.");
        }
        Manifest manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<Manifest>(File.ReadAllText(path), JsonOptions)
                ?? throw new CheckpointException($"Expert store '{folder}': {ManifestFile} is empty.");
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"Expert store '{folder}': {ManifestFile} is not valid JSON ({e.Message}).");
        }
        if (manifest.Format != Format)
        {
            throw new CheckpointException($"Expert store '{folder}': format '{manifest.Format}' is not '{Format}'.");
        }
        var spec = SpecFrom(folder, manifest);
        if (manifest.GroupSize < 2)
        {
            throw new CheckpointException($"Expert store '{folder}': group_size must be at least 2, got {manifest.GroupSize}.");
        }
        var seen = new HashSet<(int, int)>();
        foreach (var e in manifest.Experts ?? [])
        {
            if ((uint)e.Layer >= (uint)spec.Layers || (uint)e.Expert >= (uint)spec.Experts || !seen.Add((e.Layer, e.Expert)))
            {
                throw new CheckpointException($"Expert store '{folder}': entry for layer {e.Layer} expert {e.Expert} is out of range or repeated.");
            }
            if (e.Bits is not (32 or 8 or 4) || e.DeviceBytes <= 0 || e.FileBytes <= 0)
            {
                throw new CheckpointException($"Expert store '{folder}': entry for layer {e.Layer} expert {e.Expert} has bits {e.Bits}, sizes {e.FileBytes}/{e.DeviceBytes}.");
            }
            if (e.File.Contains("..", StringComparison.Ordinal) || Path.IsPathRooted(e.File))
            {
                throw new CheckpointException($"Expert store '{folder}': entry for layer {e.Layer} expert {e.Expert} names a file outside the store ('{e.File}').");
            }
        }
        if (seen.Count != spec.Layers * spec.Experts)
        {
            throw new CheckpointException($"Expert store '{folder}' lists {seen.Count} experts, the model has {spec.Layers * spec.Experts}.");
        }
        return new ExpertWeightStore(Path.GetFullPath(folder), spec, manifest.GroupSize, manifest.Experts!);
    }

    private static ModelSpec SpecFrom(string folder, Manifest manifest)
    {
        int Int(string key) => manifest.Settings is not null && manifest.Settings.TryGetValue(key, out var v) && int.TryParse(v, out var n) && n > 0
            ? n : throw new CheckpointException($"Expert store '{folder}': setting '{key}' is missing or not a positive integer.");
        string Text(string key) => manifest.Settings is not null && manifest.Settings.TryGetValue(key, out var v) && v.Length > 0
            ? v : throw new CheckpointException($"Expert store '{folder}': setting '{key}' is missing.");
        return new ModelSpec(manifest.Model ?? "store", Int("num_hidden_layers"), Int("num_local_experts"), Int("hidden_size"), Int("intermediate_size"),
            Int("num_experts_per_tok"), Text(ModelSpec.ExpertPluginKey), Text(ModelSpec.RouterPluginKey));
    }

    /// <summary>
    /// Reads one expert's file (header validated, every tensor checked against its SHA-256) and dequantises it to float32
    /// tensors on <paramref name="device"/>. Throws <see cref="CheckpointException"/> naming the expert when anything is wrong.
    /// </summary>
    public LoadedExpertWeights Load(int layer, int expert, Device? device = null) => ReadHost(layer, expert).ToTensors(device);

    /// <summary>
    /// Reads one expert's file into host memory (header validated, every tensor checked against its SHA-256, quantised
    /// tensors dequantised). Creates no tensor. Throws <see cref="CheckpointException"/> naming the expert when anything is wrong.
    /// </summary>
    public HostExpertWeights ReadHost(int layer, int expert)
    {
        var entry = Entry(layer, expert);
        var path = Path.Combine(Folder, entry.File);
        try
        {
            var file = SafeTensorsFile.Open(path);
            if (!file.Metadata.TryGetValue(BitsKey, out var bitsText) || bitsText != entry.Bits.ToString(System.Globalization.CultureInfo.InvariantCulture))
            {
                throw new CheckpointException($"its file says {bitsText ?? "no"} bits, the manifest {entry.Bits}");
            }
            var group = file.Metadata.TryGetValue(GroupKey, out var g) && int.TryParse(g, out var gs) && gs >= 2 ? gs
                : throw new CheckpointException($"its file has no valid '{GroupKey}'");
            var shapes = file.Metadata.TryGetValue(ShapesKey, out var s) ? JsonSerializer.Deserialize<Dictionary<string, long[]>>(s) : null;
            if (shapes is null || shapes.Count == 0)
            {
                throw new CheckpointException($"its file has no '{ShapesKey}'");
            }
            long read = 0;
            var result = new Dictionary<string, (float[], long[])>(StringComparer.Ordinal);
            foreach (var (name, shape) in shapes.OrderBy(p => p.Key, StringComparer.Ordinal))
            {
                var (rows, cols) = Matrix(shape);
                if (entry.Bits == 32)
                {
                    if (!file.Tensors.TryGetValue(name, out var t) || t.DType != "F32" || !t.Shape.SequenceEqual(shape))
                    {
                        throw new CheckpointException($"tensor '{name}' is missing or not F32 [{string.Join(", ", shape)}]");
                    }
                    var bytes = file.ReadBytes(name);
                    read += bytes.LongLength;
                    var values = new float[bytes.Length / 4];
                    Buffer.BlockCopy(bytes, 0, values, 0, bytes.Length);
                    result[name] = (values, shape);
                    continue;
                }
                var codes = file.ReadBytes($"{name}.q{entry.Bits}");
                var scaleBytes = file.ReadBytes($"{name}.scale");
                read += codes.LongLength + scaleBytes.LongLength;
                var scales = new float[scaleBytes.Length / 4];
                Buffer.BlockCopy(scaleBytes, 0, scales, 0, scales.Length * 4);
                try
                {
                    result[name] = (GroupQuantizer.Dequantize(codes, scales, rows, cols, entry.Bits, group), shape);
                }
                catch (ArgumentException e)
                {
                    throw new CheckpointException($"tensor '{name}': {e.Message}");
                }
            }
            return new HostExpertWeights(result, read);
        }
        catch (Exception e) when (e is CheckpointException or IOException or JsonException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"Expert store '{Folder}': expert {expert} of layer {layer} ({entry.File}) cannot be loaded: {e.Message}");
        }
    }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    private sealed record Manifest(string Format, string? Model, Dictionary<string, string>? Settings, int GroupSize, List<ExpertStoreEntry>? Experts);
}
