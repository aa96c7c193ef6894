using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Offload;

/// <summary>A silo's shared backbone streaming its attention weights (<c>MoeGrains:Offload:ResidentAttentionLayers</c>).</summary>
public sealed class SiloBackboneStreamingTests
{
    [Fact]
    public async Task A_silo_streaming_attention_weights_generates_the_in_process_tokens_with_two_of_three_blocks_resident()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 17, layers: 3, experts: 4);
        long[] prompt = [3, 7, 1, 9, 4];
        var options = new GenerationOptions { MaxTokens = 10, Temperature = 0 };
        List<int> expected = [];
        long allBytes;
        using (var local = DecoderSession.InProcess(TinyModel.BuiltIn(), checkpoint, TinyModel.Services, "lm"))
        {
            await foreach (var t in TextGeneration.GenerateAsync(local.AppendAsync, [.. prompt.Select(p => (int)p)], options, 32)) expected.Add(t);
            allBytes = local.Backbone.AllBytes;
        }

        await using var cluster = await ModelClusters.StartAsync(1, checkpoint, o => o.Offload.ResidentAttentionLayers = 2);
        var grains = Enumerable.Range(0, 2).Select(i => cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", $"streamed-{i}"))).ToArray();
        var actual = await Task.WhenAll(grains.Select(async g =>
        {
            var tokens = new List<int>();
            await foreach (var t in TextGeneration.GenerateAsync(async (ids, ct) => (await g.Append(ids, null, ct)).Logits, [.. prompt.Select(p => (int)p)], options, 32)) tokens.Add(t);
            return tokens;
        }));
        Assert.All(actual, a => Assert.Equal(expected, a));
        // A context-coherent session too (its replica runs the blocks inside dispose scopes of its own: a stage made there
        // must keep its weights after the scope ends).
        var coherent = cluster.GrainFactory.GetGrain<ICoherentDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", "streamed-coherent"));
        var coherentTokens = new List<int>();
        await foreach (var t in TextGeneration.GenerateAsync(async (ids, ct) => (await coherent.Append(ids, null, ct)).Logits, [.. prompt.Select(p => (int)p)], options, 32)) coherentTokens.Add(t);
        Assert.Equal(expected, coherentTokens);
        await coherent.Close();

        var backbones = cluster.Silos[0].Services.GetRequiredService<SiloBackbones>();
        var backbone = backbones.Backbone("lm")!;
        Assert.True(backbone.Streamed);
        Assert.Equal(2, backbone.Streaming!.PeakResidentLayers);
        Assert.True(backbone.Streaming.Hits > 0); // a block made in an earlier step (in another call's dispose scope) is used again
        // The three blocks' attention weights never on the device at once, whichever session ran.
        var block = backbone.Streaming.BytesCopied / backbone.Streaming.Loads;
        Assert.Equal(allBytes - block, backbones.PeakDeviceBytes()["lm"]);
        foreach (var g in grains) await g.Close();
    }

    [Fact]
    public async Task A_negative_resident_attention_setting_stops_the_silo_by_name()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 17, layers: 2, experts: 4);
        var e = await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await using var cluster = await ModelClusters.StartAsync(1, checkpoint, o => o.Offload.ResidentAttentionLayers = -1);
        });
        Assert.IsType<Microsoft.Extensions.Options.OptionsValidationException>(e);
        Assert.Contains("MoeGrains:Offload:ResidentAttentionLayers", e.Message);
    }
}
