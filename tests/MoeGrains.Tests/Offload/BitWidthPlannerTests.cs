using MoeGrains.Checkpoints;
using MoeGrains.Offload;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Offload;

public sealed class BitWidthPlannerTests
{
    [Fact]
    public void Calibrated_bit_widths_meet_the_average_and_give_4_bits_to_the_least_used_experts_first()
    {
        using var dir = TestPaths.Temp();
        var path = dir.File("tiny.safetensors");
        var spec = TinyModel.Create(path);
        var file = SafeTensorsFile.Open(path);
        // Layer 0's experts are used a lot, layer 1's hardly: at 6 bits on average half the weights go to 4 bits, all in layer 1.
        var plan = BitWidthPlanner.Plan(file, spec, (layer, expert) => layer == 0 ? 1.0 : 0.01, targetBits: 6);
        Assert.Equal(spec.Layers * spec.Experts, plan.Count);
        Assert.All(plan, c => Assert.True(c.Error4 > c.Error8 && c.Error8 > 0 && c.Error4 < 0.2, $"{c.Layer}/{c.Expert}: {c.Error4} / {c.Error8}"));
        Assert.All(plan.Where(c => c.Layer == 0), c => Assert.Equal(8, c.Bits));
        Assert.All(plan.Where(c => c.Layer == 1), c => Assert.Equal(4, c.Bits));

        // The store written with them holds each expert at its width, between the all-4 and all-8 stores in size.
        var mixed = ExpertWeightStore.Write(file, spec, dir.File("mixed"), BitWidthPlanner.Bits(plan));
        var eight = ExpertWeightStore.Write(file, spec, dir.File("eight"), (_, _) => 8);
        var four = ExpertWeightStore.Write(file, spec, dir.File("four"), (_, _) => 4);
        Assert.All(mixed.Entries, e => Assert.Equal(e.Layer == 0 ? 8 : 4, e.Bits));
        long Size(ExpertWeightStore s) => s.Entries.Sum(e => e.FileBytes);
        Assert.True(Size(four) < Size(mixed) && Size(mixed) < Size(eight));
        Assert.InRange(Size(mixed), (Size(four) + Size(eight)) / 2 - 1024, (Size(four) + Size(eight)) / 2 + 1024);

        Assert.Throws<ArgumentOutOfRangeException>(() => BitWidthPlanner.Plan(file, spec, (_, _) => 1, targetBits: 3));
    }
}
