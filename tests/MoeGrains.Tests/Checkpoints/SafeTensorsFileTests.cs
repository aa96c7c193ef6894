using System.Text;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Checkpoints;

public sealed class SafeTensorsFileTests
{
    private static string WriteSample(TempFolder dir)
    {
        var path = dir.File("sample.safetensors");
        using var a = arange(12, dtype: ScalarType.Float32).reshape(3, 4);
        using var b = ones(new long[] { 5 }, dtype: ScalarType.BFloat16);
        using var c = tensor(new long[] { 1, 2, 3 });
        SafeTensorsFile.Write(path, [new("a", a), new("b", b), new("c", c)], new Dictionary<string, string> { ["note"] = "hi" });
        return path;
    }

    [Fact]
    public void Round_trip_keeps_names_dtypes_shapes_values_and_metadata()
    {
        using var dir = TestPaths.Temp();
        var file = SafeTensorsFile.Open(WriteSample(dir));
        Assert.Equal("hi", file.Metadata["note"]);
        Assert.True(file.HasChecksums);
        Assert.Equal(["a", "b", "c"], file.Tensors.Keys.Order());
        using var a = file.Load("a");
        Assert.Equal(new long[] { 3, 4 }, a.shape);
        Assert.Equal(11f, a[2, 3].item<float>());
        using var b = file.Load("b");
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        using var c = file.Load("c");
        Assert.Equal(new long[] { 1, 2, 3 }, c.data<long>().ToArray());
    }

    [Fact]
    public void Truncated_file_is_detected_when_opened()
    {
        using var dir = TestPaths.Temp();
        var path = WriteSample(dir);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^10]);
        var e = Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("outside the", e.Message);
        File.WriteAllBytes(path, bytes[..5]);
        Assert.Contains("truncated", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
    }

    [Fact]
    public void Flipped_data_byte_fails_only_the_tensor_it_is_in()
    {
        using var dir = TestPaths.Temp();
        var path = WriteSample(dir);
        var file = SafeTensorsFile.Open(path);
        var bytes = File.ReadAllBytes(path);
        bytes[file.DataStart + file.Tensors["a"].Begin + 5] ^= 0x40;
        File.WriteAllBytes(path, bytes);
        var reopened = SafeTensorsFile.Open(path);
        var e = Assert.Throws<CheckpointException>(() => reopened.Load("a"));
        Assert.Contains("'a' fails its SHA-256 check", e.Message);
        using var b = reopened.Load("b"); // others unaffected
        Assert.Equal(5, b.numel());
    }

    [Fact]
    public void Wrong_header_length_is_refused()
    {
        using var dir = TestPaths.Temp();
        var path = WriteSample(dir);
        var bytes = File.ReadAllBytes(path);
        BitConverter.GetBytes((ulong)bytes.Length * 2).CopyTo(bytes, 0);
        File.WriteAllBytes(path, bytes);
        Assert.Contains("header length", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
        BitConverter.GetBytes(3UL).CopyTo(bytes, 0);
        File.WriteAllBytes(path, bytes);
        Assert.Contains("JSON", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
    }

    private static string WriteRaw(TempFolder dir, string header, int dataBytes)
    {
        var path = dir.File("raw.safetensors");
        var h = Encoding.UTF8.GetBytes(header);
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes((ulong)h.Length));
        f.Write(h);
        f.Write(new byte[dataBytes]);
        return path;
    }

    [Fact]
    public void Offsets_out_of_range_are_refused()
    {
        using var dir = TestPaths.Temp();
        var path = WriteRaw(dir, """{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8);
        Assert.Contains("outside the 8 data bytes", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
    }

    [Fact]
    public void Dtype_and_shape_must_match_the_byte_range()
    {
        using var dir = TestPaths.Temp();
        var path = WriteRaw(dir, """{"x":{"dtype":"F16","shape":[4],"data_offsets":[0,16]}}""", 16);
        Assert.Contains("needs 8 bytes but its offsets span 16", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
        path = WriteRaw(dir, """{"x":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}""", 16);
        Assert.Contains("unknown dtype 'Q4'", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
    }

    [Fact]
    public void Overlapping_tensors_are_refused()
    {
        using var dir = TestPaths.Temp();
        var path = WriteRaw(dir, """{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12);
        Assert.Contains("overlap", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
    }

    [Fact]
    public void Shape_overflow_in_a_header_is_refused()
    {
        using var dir = TestPaths.Temp();
        var path = WriteRaw(dir, """{"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}""", 16);
        Assert.Contains("invalid shape", Assert.Throws<CheckpointException>(() => SafeTensorsFile.Open(path)).Message);
    }
}
