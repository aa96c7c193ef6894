using MoeGrains.Checkpoints;
using MoeGrains.Diffusion;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Diffusion;

public sealed class IsolatedTrainingTests
{
    private static Dictionary<string, byte[]> Tensors(string file)
    {
        var f = SafeTensorsFile.Open(file);
        return f.Tensors.Keys.ToDictionary(k => k, f.ReadBytes);
    }

    private static DiffusionModelFolder Folder(string path, int experts, long seed, Func<int, int> partitionOf)
    {
        var folder = DiffusionModelFolder.Create(path, DiffusionTestData.Tiny(experts, seed));
        folder.WritePartition([.. Enumerable.Range(0, 3823).Select(partitionOf)]);
        return folder;
    }

    [Fact]
    public void An_experts_checkpoint_depends_only_on_its_partition_and_seed()
    {
        TorchSharp.torch.set_num_threads(1);
        using var dir = TestPaths.Temp();
        // The same 40 images are expert 0's partition in both models; the rest of the data is split differently (2 vs 3 experts).
        var a = Folder(dir.File("a"), 2, 1, i => i < 40 ? 0 : 1);
        var b = Folder(dir.File("b"), 3, 1, i => i < 40 ? 0 : i < 100 ? 1 : 2);
        var c = Folder(dir.File("c"), 2, 2, i => i < 40 ? 0 : 1);          // another seed
        var d = Folder(dir.File("d"), 2, 1, i => i is >= 40 and < 80 ? 0 : 1); // another partition
        var plugins = DiffusionTestData.Plugins;
        var services = DiffusionTestData.Services;
        var ra = DiffusionJobs.TrainExpert(a, DiffusionTestData.Digits, 0, plugins, services);
        DiffusionJobs.TrainExpert(a, DiffusionTestData.Digits, 1, plugins, services);
        DiffusionJobs.TrainExpert(b, DiffusionTestData.Digits, 0, plugins, services);
        DiffusionJobs.TrainExpert(c, DiffusionTestData.Digits, 0, plugins, services);
        DiffusionJobs.TrainExpert(d, DiffusionTestData.Digits, 0, plugins, services);

        var wa = Tensors(a.ExpertFile(0));
        var wb = Tensors(b.ExpertFile(0));
        Assert.NotEmpty(wa);
        Assert.Equal(wa.Keys.Order(), wb.Keys.Order());
        foreach (var (name, bytes) in wa) Assert.True(bytes.AsSpan().SequenceEqual(wb[name]), $"{name} differs although partition and seed are the same");
        Assert.Contains(Tensors(c.ExpertFile(0)), kv => !kv.Value.AsSpan().SequenceEqual(wa[kv.Key]));
        Assert.Contains(Tensors(d.ExpertFile(0)), kv => !kv.Value.AsSpan().SequenceEqual(wa[kv.Key]));
        Assert.Contains(Tensors(a.ExpertFile(1)), kv => !kv.Value.AsSpan().SequenceEqual(wa[kv.Key]));

        // Each run has its own progress file, and the FLOPs follow from steps × batch × the expert's forward cost.
        var progress = DiffusionProgress.Read(a.ProgressFile("expert-0"));
        Assert.NotNull(progress);
        Assert.True(progress.Done);
        Assert.Equal(40, progress.Images);
        Assert.Equal(ra.Flops, DiffusionModelFolder.TrainFlops(a.ExpertFile(0)));
        Assert.True(ra.Flops > 0 && ra.Flops % (3L * 4 * 8) == 0);
    }

    [Fact]
    public void The_router_learns_the_partition_from_noisy_images_with_cross_entropy()
    {
        TorchSharp.torch.set_num_threads(1);
        using var scope = TorchSharp.torch.NewDisposeScope();
        var (train, held) = DigitData.Load(DiffusionTestData.Digits, DigitData.OptDigits);
        using (train)
        using (held)
        {
            var settings = DiffusionTestData.Tiny(2).Settings;
            using var router = DiffusionTestData.Plugins.Create<IDiffusionRouter>("partition-router", global::MoeGrains.Plugins.PluginKind.DiffusionRouter,
                new PluginContext { Id = "r", Device = TorchSharp.torch.CPU, Settings = settings, Seed = 3 }, DiffusionTestData.Services);
            var partition = train.Labels.Select(l => l < 5 ? 0 : 1).ToArray();
            // Held-out cross-entropy at a low noise level, before and after a few training steps.
            using var gen = new TorchSharp.torch.Generator(9);
            var x0 = held.Images.narrow(0, 0, 256);
            var t = TorchSharp.torch.full(256, 0.1f);
            var xt = FlowMatching.Interpolate(x0, TorchSharp.torch.randn(x0.shape, generator: gen), t);
            var labels = TorchSharp.torch.tensor(held.Labels.Take(256).Select(l => l < 5 ? 0L : 1L).ToArray());
            double HeldOut()
            {
                using var _ = TorchSharp.torch.no_grad();
                return TorchSharp.torch.nn.functional.cross_entropy(router.Logits(xt, t), labels).item<float>();
            }
            var before = HeldOut();
            var result = DiffusionTrainer.TrainRouter(router, train.Images, partition, new DiffusionTrainingOptions { Steps = 40, Batch = 32, LearningRate = 5e-3, Seed = 4 });
            var after = HeldOut();
            Assert.True(after < before - 0.05, $"held-out cross-entropy {before:F3} -> {after:F3} did not fall");
            Assert.Equal(3L * 40 * 32 * router.FlopsPerImage, result.Flops);
        }
    }
}
