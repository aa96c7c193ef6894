using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Models;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Cluster;

[Collection(ClusterCollection.Name)]
public sealed class CorruptCheckpointTests(ClusterFixture fixture)
{
    [Fact]
    public async Task A_corrupt_expert_fails_alone_and_a_restored_file_works_without_a_restart()
    {
        var original = await File.ReadAllBytesAsync(fixture.SparePath);
        var file = SafeTensorsFile.Open(fixture.SparePath);
        var damaged = (byte[])original.Clone();
        damaged[file.DataStart + file.Tensors[ModelSpec.ExpertPrefix(0, 3) + "w1.weight"].Begin + 17] ^= 0x5A;
        await File.WriteAllBytesAsync(fixture.SparePath, damaged);

        using var x = randn(4, fixture.Spec.DModel);
        var payload = WireTensor.FromTensor(x);
        var grains = fixture.Cluster.GrainFactory;
        var e = await Assert.ThrowsAsync<CheckpointException>(() => grains.GetGrain<IExpertGrain>(ExpertKey.Expert("spare", 0, 3)).Forward(payload));
        Assert.Contains("w1.weight' fails its SHA-256 check", e.Message);
        var neighbour = await grains.GetGrain<IExpertGrain>(ExpertKey.Expert("spare", 0, 2)).Forward(payload); // unaffected
        Assert.Equal(x.shape, neighbour.Output.Shape);

        await File.WriteAllBytesAsync(fixture.SparePath, original);
        File.SetLastWriteTimeUtc(fixture.SparePath, DateTime.UtcNow.AddSeconds(1)); // same length: make the change visible
        var repaired = await grains.GetGrain<IExpertGrain>(ExpertKey.Expert("spare", 0, 3)).Forward(payload);
        var reference = await grains.GetGrain<IExpertGrain>(ExpertKey.Expert("tiny", 0, 3)).Forward(payload);
        Assert.Equal(reference.Output.ToFloatArray(), repaired.Output.ToFloatArray());
    }
}
