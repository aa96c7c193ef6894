using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Models;
using MoeGrains.Offload;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Offload;

public sealed class ExpertWeightStoreTests
{
    [Theory]
    [InlineData(8, 32)]
    [InlineData(4, 32)]
    [InlineData(8, 48)] // 48 does not divide 64 columns: a whole row is one group
    public void Group_quantisation_round_trips_within_half_a_step(int bits, int group)
    {
        var random = new Random(bits * 100 + group);
        const int rows = 12, cols = 64;
        var values = Enumerable.Range(0, rows * cols).Select(_ => (float)(random.NextDouble() * 4 - 2) * (random.Next(3) == 0 ? 10 : 1)).ToArray();
        var (codes, scales) = GroupQuantizer.Quantize(values, rows, cols, bits, group);
        var back = GroupQuantizer.Dequantize(codes, scales, rows, cols, bits, group);
        var g = GroupQuantizer.GroupFor(cols, group);
        Assert.Equal(bits == 8 ? rows * cols : rows * cols / 2, codes.Length);
        Assert.Equal(rows * (cols / g), scales.Length);
        for (var i = 0; i < values.Length; i++)
        {
            var scale = scales[i / cols * (cols / g) + i % cols / g];
            Assert.True(Math.Abs(values[i] - back[i]) <= scale / 2 + 1e-6f, $"element {i}: {values[i]} came back as {back[i]} (scale {scale})");
        }
        // The largest value of each group is exact up to rounding of the scale.
        var max = values.Take(g).Select(Math.Abs).Max();
        Assert.Equal(max, back.Take(g).Select(Math.Abs).Max(), 3);
    }

    [Fact]
    public void A_store_holds_every_expert_and_loads_it_bit_identical_at_32_bits_and_close_at_8_and_4()
    {
        using var folder = TestPaths.Temp();
        var spec = TinyModel.Create(folder.File("m.safetensors"), layers: 2, experts: 4);
        var checkpoint = SafeTensorsFile.Open(folder.File("m.safetensors"));
        var full = ExpertWeightStore.Write(checkpoint, spec, folder.File("fp32"));
        var mixed = ExpertWeightStore.Write(checkpoint, spec, folder.File("mixed"), (layer, expert) => expert % 2 == 0 ? 8 : 4, groupSize: 16);
        Assert.Equal(8, full.Count);
        Assert.Equal(full.TotalDeviceBytes, mixed.TotalDeviceBytes);
        Assert.True(mixed.Entries.Sum(e => e.FileBytes) < full.Entries.Sum(e => e.FileBytes) / 3, "8/4-bit files (with a scale per 16 values) are at least 3x smaller");
        foreach (var e in full.Entries)
        {
            using var stored = full.Load(e.Layer, e.Expert);
            using var quantised = mixed.Load(e.Layer, e.Expert);
            foreach (var (name, original) in checkpoint.LoadPrefix(ModelSpec.ExpertPrefix(e.Layer, e.Expert)))
            {
                using (original)
                {
                    Assert.Equal(original.data<float>().ToArray(), stored.Weights[name].data<float>().ToArray());
                    var bits = mixed.Entry(e.Layer, e.Expert).Bits;
                    var error = (quantised.Weights[name] - original).abs().max().item<float>();
                    var bound = original.abs().max().item<float>() / GroupQuantizer.MaxLevel(bits) / 2 + 1e-6f;
                    Assert.True(error <= bound, $"{e.Layer}/{e.Expert} {name} at {bits} bits: error {error} above {bound}");
                }
            }
        }
    }

    [Fact]
    public void A_corrupt_expert_file_fails_that_expert_with_a_message_naming_it_and_no_other()
    {
        using var folder = TestPaths.Temp();
        var spec = TinyModel.Create(folder.File("m.safetensors"), layers: 1, experts: 4);
        var store = ExpertWeightStore.Write(SafeTensorsFile.Open(folder.File("m.safetensors")), spec, folder.File("store"));
        var path = Path.Combine(store.Folder, store.Entry(0, 2).File);
        var bytes = File.ReadAllBytes(path);
        bytes[^5] ^= 0x44;
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<CheckpointException>(() => store.ReadHost(0, 2));
        Assert.Contains("expert 2 of layer 0", e.Message);
        Assert.Contains("SHA-256", e.Message);
        using var neighbour = store.Load(0, 1);
        Assert.Equal(3, neighbour.Weights.Count);
        File.Delete(Path.Combine(store.Folder, store.Entry(0, 3).File));
        Assert.Contains("expert 3 of layer 0", Assert.Throws<CheckpointException>(() => store.ReadHost(0, 3)).Message);
    }

    [Fact]
    public void A_bad_manifest_is_refused_with_a_typed_error()
    {
        using var folder = TestPaths.Temp();
        Assert.Contains("no store.json", Assert.Throws<CheckpointException>(() => ExpertWeightStore.Open(folder.Path)).Message);
        File.WriteAllText(folder.File("store.json"), "{ not json");
        Assert.Contains("not valid JSON", Assert.Throws<CheckpointException>(() => ExpertWeightStore.Open(folder.Path)).Message);
        var spec = TinyModel.Create(folder.File("m.safetensors"), layers: 1, experts: 2);
        var store = ExpertWeightStore.Write(SafeTensorsFile.Open(folder.File("m.safetensors")), spec, folder.File("s"));
        Assert.Throws<UnknownExpertException>(() => store.Entry(1, 0));
        var manifest = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(store.Folder, "store.json")))!;
        manifest["experts"]![1]!["expert"] = 0; // expert 0 listed twice, expert 1 missing
        File.WriteAllText(Path.Combine(store.Folder, "store.json"), manifest.ToJsonString());
        Assert.Contains("repeated", Assert.Throws<CheckpointException>(() => ExpertWeightStore.Open(store.Folder)).Message);
    }
}
