using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Placement;

public sealed class CoherentDispatchTests
{
    [Fact]
    public async Task Context_coherent_dispatch_gives_the_default_paths_logits_on_three_silos()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 9, layers: 3, experts: 6);
        await using var cluster = await ModelClusters.StartAsync(3, checkpoint, o => o.ExpertTimeoutMs = 20_000);
        Assert.Equal(3, (await cluster.GrainFactory.GetGrain<IClusterInfoGrain>(0).Silos()).Length); // started as members

        var prompt = TextTokenizers.FromMetadata(SafeTensorsFile.Open(checkpoint).Metadata).Encode("a stitch in time").Select(t => (long)t).ToArray();
        var plain = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", "plain"));
        var coherent = cluster.GrainFactory.GetGrain<ICoherentDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", "coherent"));
        var a = await plain.Append(prompt);
        var b = await coherent.Append(prompt);
        Assert.Equal(a.Logits, b.Logits); // the prompt runs the default path in both
        var home = b.Silo;
        long hops = 0;
        for (var i = 0; i < 10; i++)
        {
            var next = Array.IndexOf(a.Logits, a.Logits.Max());
            a = await plain.Append([next]);
            var before = b.CrossSiloMessages;
            b = await coherent.Append([next]);
            hops += b.CrossSiloMessages - before;
            Assert.Equal(a.Position, b.Position);
            for (var v = 0; v < a.Logits.Length; v++)
            {
                Assert.True(Math.Abs(a.Logits[v] - b.Logits[v]) <= 1e-4f * Math.Max(1, Math.Abs(a.Logits[v])), $"step {i}, logit {v}: {a.Logits[v]} vs {b.Logits[v]}");
            }
            Assert.Equal(a.ExpertSlots, b.ExpertSlots);
        }
        Assert.Equal(home, b.Silo);
        Assert.True(hops > 0, "the tokens never left the home silo: nothing was tested");
        Assert.True(b.CrossSiloBytes > 0);
        await plain.Close();
        await coherent.Close();
    }
}
