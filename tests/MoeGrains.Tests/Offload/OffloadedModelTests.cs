using MoeGrains.Checkpoints;
using MoeGrains.Dispatch;
using MoeGrains.Generation;
using MoeGrains.Offload;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Offload;

public sealed class OffloadedModelTests
{
    private sealed record Counted(int Id) : IDisposable
    {
        public bool Disposed { get; private set; }

        public void Dispose() => Disposed = true;
    }

    [Theory]
    [InlineData(ExpertCachePolicy.Lru)]
    [InlineData(ExpertCachePolicy.Lfu)]
    [InlineData(ExpertCachePolicy.Predictive)]
    public void The_cache_never_holds_more_than_its_budget_and_evicts_only_unpinned_experts(ExpertCachePolicy policy)
    {
        var sizes = Enumerable.Range(0, 12).ToDictionary(e => new ExpertId(e / 4, e % 4), e => 100L + 10 * e);
        var loads = 0;
        var made = new List<Counted>();
        using var cache = new DeviceExpertCache<Counted>(new ExpertCacheBudget(4, 450), policy, id => sizes[id], id =>
        {
            loads++;
            var c = new Counted(id.Layer * 4 + id.Expert);
            made.Add(c);
            return (c, sizes[id]);
        });
        var random = new Random(3);
        cache.NextUse = id => (id.Layer * 7 + id.Expert * 3) % 5;
        for (var i = 0; i < 300; i++)
        {
            var id = new ExpertId(random.Next(3), random.Next(4));
            if (policy == ExpertCachePolicy.Predictive && i % 3 == 0)
            {
                cache.Prefetch(new ExpertId(random.Next(3), random.Next(4)));
            }
            using (var held = cache.Acquire(id))
            {
                using var other = cache.Acquire(new ExpertId((id.Layer + 1) % 3, id.Expert)); // two pinned at once
                Assert.False(held.Value.Disposed);
                Assert.Equal(id.Layer * 4 + id.Expert, held.Value.Id);
                var stats = cache.Stats();
                Assert.True(stats.ResidentExperts <= 4, $"{stats.ResidentExperts} experts resident");
                Assert.True(stats.ResidentBytes <= 450, $"{stats.ResidentBytes} bytes resident");
            }
        }
        cache.WaitForPrefetches();
        var final = cache.Stats();
        Assert.True(final.PeakResidentExperts <= 4 && final.PeakResidentBytes <= 450);
        Assert.Equal(600, final.Accesses);
        Assert.Equal(final.Accesses - final.Hits, final.DemandLoads);
        Assert.Equal(loads, (int)final.Loads);
        Assert.Equal(made.Count - final.ResidentExperts, made.Count(c => c.Disposed)); // every evicted expert was disposed, no resident one
        Assert.True(final.Evictions > 0);
        Assert.Throws<ArgumentOutOfRangeException>(() => new ExpertCacheBudget(2, 50).Validate(100));
    }

    [Fact]
    public async Task Offloaded_layers_at_a_quarter_budget_with_prefetch_equal_the_all_resident_model_and_reload_identical_weights()
    {
        using var folder = TestPaths.Temp();
        var path = folder.File("m.safetensors");
        var spec = TinyModel.Create(path, layers: 3, experts: 8);
        var store = ExpertWeightStore.Write(SafeTensorsFile.Open(path), spec, folder.File("store"));
        var plugins = TinyModel.BuiltIn();
        using var local = new LocalMoeModel(plugins, path, TinyModel.Services);
        // A predictor from the model's own routes on other inputs.
        var predictor = new RoutingPathPredictor(3, 8, 2);
        using (var recorder = new OffloadedMoeModel(plugins, store, TinyModel.Services, new OffloadOptions { Budget = new(24) }, null, path))
        {
            var rows = new List<int[][]>();
            recorder.OnRouted = (layer, routing, _) =>
            {
                if (layer == 0) rows = [.. Enumerable.Range(0, routing.Tokens).Select(_ => new int[3][])];
                for (var t = 0; t < routing.Tokens; t++) rows[t][layer] = routing.Experts[(t * 2)..(t * 2 + 2)];
                if (layer == 2) foreach (var r in rows) predictor.Observe(new RoutePath(-1, r));
            };
            await RunLayers(recorder, randn(new long[] { 64, spec.DModel }, generator: new Generator(99)));
        }
        Assert.Equal(64, predictor.Observed);

        using var offloaded = new OffloadedMoeModel(plugins, store, TinyModel.Services,
            new OffloadOptions { Budget = new(6), Policy = ExpertCachePolicy.Predictive, PrefetchThreshold = 0.05 }, predictor, path);
        for (var round = 0; round < 4; round++)
        {
            using var x = randn(new long[] { 3, spec.DModel }, generator: new Generator((ulong)round));
            var h = x.clone();
            var reference = x.clone();
            for (var layer = 0; layer < 3; layer++)
            {
                using var expected = await local.ForwardLayerAsync(layer, reference);
                using var actual = await offloaded.ForwardLayerAsync(layer, h);
                Assert.Empty(actual.FailedExperts);
                Assert.Equal(expected.Output.data<float>().ToArray(), actual.Output.data<float>().ToArray());
                Assert.True(offloaded.Cache.Stats().ResidentExperts <= 6);
                h.Dispose();
                reference.Dispose();
                h = actual.Output.clone();
                reference = expected.Output.clone();
            }
            h.Dispose();
            reference.Dispose();
        }
        offloaded.Cache.WaitForPrefetches();
        var stats = offloaded.Cache.Stats();
        Assert.True(stats.Prefetches > 0, "the predictor prefetched");
        Assert.True(stats.Evictions > 0, "a quarter of the experts cannot hold every one used");
        Assert.True(stats.PeakResidentExperts <= 6);

        // An evicted expert comes back with bit-identical weights.
        var id = new ExpertId(0, 0);
        float[] Weights()
        {
            using var lease = offloaded.Cache.Acquire(id);
            var expert = lease.Value.Expert ?? throw new InvalidOperationException("not made yet");
            return [.. ((IStateDict)expert).StateDict().SelectMany(p => p.Value.data<float>().ToArray())];
        }
        using (var x = randn(new long[] { 1, spec.DModel }))
        {
            using var _ = await offloaded.ForwardLayerAsync(0, x, routing: new(1, 1, [0], [1f]));
        }
        var before = Weights();
        for (var e = 1; e < 8; e++)
        {
            using var x = randn(new long[] { 1, spec.DModel });
            using var _ = await offloaded.ForwardLayerAsync(1, x, routing: new(1, 1, [e], [1f]));
        }
        offloaded.Cache.WaitForPrefetches();
        Assert.False(offloaded.Cache.IsResident(id));
        using (var x = randn(new long[] { 1, spec.DModel }))
        {
            using var _ = await offloaded.ForwardLayerAsync(0, x, routing: new(1, 1, [0], [1f]));
        }
        Assert.Equal(before, Weights());
        using (var original = SafeTensorsFile.Open(path).Load(Models.ModelSpec.ExpertPrefix(0, 0) + "w1.weight"))
        {
            Assert.Equal(original.data<float>().ToArray(), before.Take((int)original.NumberOfElements).ToArray());
        }
    }

    private static async Task RunLayers(OffloadedMoeModel model, Tensor x)
    {
        var h = x;
        for (var layer = 0; layer < model.Spec.Layers; layer++)
        {
            using var output = await model.ForwardLayerAsync(layer, h);
            h.Dispose();
            h = output.Output.clone();
        }
        h.Dispose();
    }

    [Fact]
    public async Task A_corrupt_expert_file_fails_that_expert_alone_and_the_layer_still_answers()
    {
        using var folder = TestPaths.Temp();
        var path = folder.File("m.safetensors");
        var spec = TinyModel.Create(path, layers: 1, experts: 4);
        var store = ExpertWeightStore.Write(SafeTensorsFile.Open(path), spec, folder.File("store"));
        var file = Path.Combine(store.Folder, store.Entry(0, 1).File);
        var bytes = File.ReadAllBytes(file);
        bytes[^3] ^= 0x10;
        File.WriteAllBytes(file, bytes);
        using var model = new OffloadedMoeModel(TinyModel.BuiltIn(), store, TinyModel.Services, new OffloadOptions { Budget = new(2) }, null, path);
        using var x = randn(new long[] { 2, spec.DModel });
        using var output = await model.ForwardLayerAsync(0, x, routing: new(2, 2, [0, 1, 2, 1], [0.5f, 0.5f, 0.5f, 0.5f]));
        Assert.Equal([1], output.FailedExperts);
        var failed = output.Calls.Single(c => c.Expert == 1);
        Assert.Contains("expert 1 of layer 0", failed.Error);
        Assert.Contains("SHA-256", failed.Error);
        Assert.All(output.Calls.Where(c => c.Expert != 1), c => Assert.Null(c.Error));
        Assert.True(model.Cache.Stats().ResidentExperts <= 2);
        Assert.False(model.Cache.IsResident(new ExpertId(0, 1)));
    }

    [Fact]
    public async Task Greedy_generation_with_a_quarter_of_the_experts_resident_equals_the_in_process_model()
    {
        using var folder = TestPaths.Temp();
        var path = TinyLanguageModel.Write(folder.Path, seed: 21, layers: 2, experts: 8);
        var plugins = TinyModel.BuiltIn();
        var file = SafeTensorsFile.Open(path);
        var spec = Models.ModelSpec.FromCheckpoint("lm", file);
        var store = ExpertWeightStore.Write(file, spec, folder.File("store"));
        var prompt = new long[] { 3, 7, 1, 9, 4 };
        var options = new GenerationOptions { MaxTokens = 12, Temperature = 0 };
        using var local = DecoderSession.InProcess(plugins, path, TinyModel.Services, "lm");
        var expected = new List<int>();
        await foreach (var t in TextGeneration.GenerateAsync(local.AppendAsync, [.. prompt.Select(p => (int)p)], options, 32)) expected.Add(t);

        var predictor = new RoutingPathPredictor(2, 8, 2);
        using var model = new OffloadedMoeModel(plugins, store, TinyModel.Services,
            new OffloadOptions { Budget = new(4), Policy = ExpertCachePolicy.Predictive, PrefetchThreshold = 0.01 }, predictor, path);
        using var batcher = new SessionBatcher(model, plugins, path, TinyModel.Services, 1);
        var actual = new List<int>();
        await foreach (var t in TextGeneration.GenerateAsync(async (tokens, ct) => (await batcher.StepAsync([(0, tokens)], ct))[0], [.. prompt.Select(p => (int)p)], options, 32)) actual.Add(t);
        Assert.Equal(expected, actual);
        var stats = model.Cache.Stats();
        Assert.True(stats.PeakResidentExperts <= 4);
        Assert.True(stats.Prefetches > 0);
    }
}
