using MoeGrains.Checkpoints;
using MoeGrains.Generation;
using MoeGrains.Offload;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Offload;

/// <summary>One backbone for many sessions, and attention weights streamed layer by layer.</summary>
public sealed class DecoderBackboneTests
{
    private static readonly long[][] Prompts = [[3, 7, 1, 9, 4], [8, 2, 2, 5], [1, 1, 6]];

    // Runs the prompts as concurrent sessions of one batcher, then `steps` greedy tokens each; returns every step's logits.
    private static async Task<(List<float[][]> Logits, long PeakBackboneBytes, long AllBackboneBytes, BackboneStreamingStats? Streaming)> RunAsync(
        string path, ExpertWeightStore store, BackboneOptions backbone, int steps)
    {
        var plugins = TinyModel.BuiltIn();
        using var model = new OffloadedMoeModel(plugins, store, TinyModel.Services, new OffloadOptions { Budget = new(store.Count) }, null, path);
        using var batcher = new SessionBatcher(model, plugins, path, TinyModel.Services, Prompts.Length, backbone);
        var logits = new List<float[][]> { await batcher.StepAsync([.. Prompts.Select((p, i) => (i, p))]) };
        for (var s = 0; s < steps; s++)
        {
            var last = logits[^1];
            logits.Add(await batcher.StepAsync([.. last.Select((l, i) => (i, new long[] { Array.IndexOf(l, l.Max()) }))]));
        }
        return (logits, batcher.Backbone.PeakDeviceBytes, batcher.Backbone.AllBytes, batcher.Backbone.Streaming);
    }

    private static (string Path, ExpertWeightStore Store) Model(TempFolder folder, int layers)
    {
        var path = TinyLanguageModel.Write(folder.Path, seed: 31, layers: layers, experts: 4);
        var file = SafeTensorsFile.Open(path);
        return (path, ExpertWeightStore.Write(file, Models.ModelSpec.FromCheckpoint("lm", file), folder.File("store")));
    }

    [Fact]
    public async Task Sessions_sharing_one_backbone_compute_what_sessions_with_their_own_compute()
    {
        using var folder = TestPaths.Temp();
        var (path, store) = Model(folder, layers: 2);
        var (shared, _, _, _) = await RunAsync(path, store, new BackboneOptions(), steps: 4);

        // The same prompts, each in an in-process session with a backbone (and KV caches) of its own.
        var plugins = TinyModel.BuiltIn();
        for (var i = 0; i < Prompts.Length; i++)
        {
            using var own = DecoderSession.InProcess(plugins, path, TinyModel.Services, "lm");
            var logits = await own.AppendAsync(Prompts[i]);
            for (var s = 0; ; s++)
            {
                var expected = shared[s][i];
                Assert.Equal(expected.Length, logits.Length);
                for (var v = 0; v < logits.Length; v++) Assert.Equal(expected[v], logits[v], 1e-4f);
                if (s == 4) break;
                logits = await own.AppendAsync([Array.IndexOf(expected, expected.Max())]);
            }
        }
    }

    [Fact]
    public async Task Streaming_attention_one_layer_at_a_time_changes_no_logit_and_holds_one_block_on_the_device()
    {
        using var folder = TestPaths.Temp();
        var (path, store) = Model(folder, layers: 3);
        var (resident, residentPeak, all, none) = await RunAsync(path, store, new BackboneOptions(), steps: 3);
        var (streamed, streamedPeak, _, streaming) = await RunAsync(path, store, new BackboneOptions { ResidentAttentionLayers = 1 }, steps: 3);

        Assert.Null(none);
        Assert.Equal(all, residentPeak);
        Assert.Equal(resident.Count, streamed.Count);
        for (var s = 0; s < resident.Count; s++)
        {
            for (var i = 0; i < Prompts.Length; i++)
            {
                // The same weights and operations (to float rounding: libtorch's thread count may differ between runs).
                for (var v = 0; v < resident[s][i].Length; v++) Assert.Equal(resident[s][i][v], streamed[s][i][v], 1e-5f);
                Assert.Equal(Array.IndexOf(resident[s][i], resident[s][i].Max()), Array.IndexOf(streamed[s][i], streamed[s][i].Max()));
            }
        }
        Assert.NotNull(streaming);
        Assert.Equal(1, streaming.PeakResidentLayers);
        // Each of the 4 steps runs the 3 blocks in turn with room for one: every block is made again each step (3 sessions, 1 load).
        Assert.True(streaming.Loads == 4 * 3 && streaming.Accesses == 4 * 3 * Prompts.Length, $"loads {streaming.Loads}, accesses {streaming.Accesses}, hits {streaming.Hits}");
        var attentionBytes = streaming.BytesCopied / streaming.Loads;
        Assert.True(attentionBytes > 0);
        Assert.True(residentPeak - 2 * attentionBytes == streamedPeak, $"resident {residentPeak}, streamed {streamedPeak}, attention {attentionBytes}, loads {streaming.Loads}, copied {streaming.BytesCopied}");
    }

    [Fact]
    public void A_negative_attention_budget_is_refused_by_name()
    {
        using var folder = TestPaths.Temp();
        var (path, _) = Model(folder, layers: 2);
        var file = SafeTensorsFile.Open(path);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => DecoderBackbone.Load(TinyModel.BuiltIn(), Models.ModelSpec.FromCheckpoint("lm", file), file,
            TorchSharp.torch.CPU, TinyModel.Services, new BackboneOptions { ResidentAttentionLayers = -1 }));
        Assert.Contains("ResidentAttentionLayers", e.Message);
    }
}
