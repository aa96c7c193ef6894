using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Placement;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Placement;

public sealed class RoutingTraceStreamTests
{
    [Fact]
    public async Task Decoder_sessions_feed_the_recorders_and_the_stream_collects_every_sampled_route()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 4, layers: 3, experts: 4);
        await using var cluster = await LocalCluster.StartAsync(2, (_, silo) => silo
            .AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.Models["lm"] = checkpoint;
            })
            .AddExpertPlugins(TestPaths.Plugins)
            .AddRoutingTraces(o => o.SamplingRate = 0.5)
            .AddRoutingTraces(o => o.SamplingRate = 0.5)); // a second call registers nothing twice

        var prompt = TextTokenizers.FromMetadata(SafeTensorsFile.Open(checkpoint).Metadata).Encode("the quick brown fox");
        var session = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", "s1"));
        var fed = prompt.Select(t => (long)t).ToList();
        var step = await session.Append([.. fed], null);
        for (var i = 0; i < 12; i++)
        {
            var next = Array.IndexOf(step.Logits, step.Logits.Max());
            fed.Add(next);
            step = await session.Append([next], null);
        }
        await session.Close();

        var sink = cluster.Silos.Select(s => (RoutingTraceSink)s.Services.GetService(typeof(RoutingTraceSink))!).Single(s => s.Recorder("lm").Count > 0);
        var local = sink.Recorder("lm").Routes();
        var expectedTokens = Enumerable.Range(0, fed.Count).Select(p => RoutingTraces.TokenId(IDecoderSessionGrain.Key("lm", "s1"), p))
            .Where(sink.Recorder("lm").IsSampled).Order().ToArray();
        Assert.InRange(expectedTokens.Length, 1, fed.Count - 1); // about half sampled
        Assert.Equal(expectedTokens, local.Select(r => r.Token).ToArray());
        Assert.All(local, r =>
        {
            Assert.Equal([0, 1, 2], r.Layers.Select(l => l.Layer).ToArray()); // complete routes
            Assert.All(r.Layers, l => Assert.Equal(2, l.Experts.Length)); // top-2
        });

        // The stream delivers the same routes to the collector grain; both export forms agree.
        var collector = cluster.GrainFactory.GetGrain<IRoutingTraceGrain>("lm");
        // A token's layers arrive as separate events: wait for every route to be complete, not only for every token.
        var expectedSlots = local.Sum(r => r.Layers.Sum(l => l.Experts.Length));
        var export = await collector.Export();
        var routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes.csv");
        for (var wait = 0; (routes.Count < local.Count || routes.Sum(r => r.Layers.Sum(l => l.Experts.Length)) < expectedSlots) && wait < 200; wait++)
        {
            await Task.Delay(50);
            export = await collector.Export();
            routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes.csv");
        }
        Assert.Equal(local.Count, export.Tokens);
        Assert.Equal(local.Select(r => r.Token), routes.Select(r => r.Token));
        Assert.Equal(local.SelectMany(r => r.Layers.SelectMany(l => l.Experts)), routes.SelectMany(r => r.Layers.SelectMany(l => l.Experts)));
        var counts = CrossLayerCountsFile.Read(new StringReader(export.CountsCsv), "counts.csv", experts: 4);
        var fromRoutes = RoutingTrace.FromTokenRoutes(routes, 4);
        Assert.Equal(fromRoutes.Transitions.Select(t => t.Counts), counts.Transitions.Select(t => t.Counts));
        Assert.Equal(local.Count * 2 * 4, counts.Total); // 2 transitions x 2 x 2 expert pairs per token

        // A context-coherent session publishes its decoded tokens' routes on the stream too (recorded on whichever silo
        // ran each block): the collector gets every sampled token's complete route.
        var coherentKey = IDecoderSessionGrain.Key("lm", "c1");
        var coherent = cluster.GrainFactory.GetGrain<ICoherentDecoderSessionGrain>(coherentKey);
        var cstep = await coherent.Append([.. prompt.Select(t => (long)t)], null);
        var positions = Enumerable.Range(prompt.Length, 16).ToArray();
        foreach (var _ in positions)
        {
            cstep = await coherent.Append([Array.IndexOf(cstep.Logits, cstep.Logits.Max())], null);
        }
        await coherent.Close();
        var decoded = positions.Select(p => RoutingTraces.TokenId(coherentKey, p)).Where(sink.Recorder("lm").IsSampled).ToHashSet();
        Assert.NotEmpty(decoded);
        IReadOnlyList<TokenRoute> collected = [];
        for (var wait = 0; wait < 200; wait++)
        {
            collected = TokenRouteFile.Read(new StringReader((await collector.Export()).RoutesCsv), "routes.csv");
            if (decoded.All(t => collected.Any(r => r.Token == t && r.Layers.Count == 3))) break;
            await Task.Delay(50);
        }
        Assert.All(decoded, t => Assert.Equal([0, 1, 2], collected.Single(r => r.Token == t).Layers.Select(l => l.Layer).ToArray()));
        Assert.True(collected.Count >= local.Count + decoded.Count, $"{collected.Count} routes collected"); // s1's and c1's
    }

    [Fact]
    public async Task Token_ids_must_match_the_rows()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = dir.File("tiny.safetensors");
        var spec = TinyModel.Create(checkpoint, layers: 1, experts: 4);
        await using var cluster = await LocalCluster.StartAsync(1, (_, silo) => silo
            .AddMoeGrains(o => { o.Device = "cpu"; o.Models["tiny"] = checkpoint; })
            .AddExpertPlugins(TestPaths.Plugins)
            .AddRoutingTraces());
        using var hidden = TorchSharp.torch.randn(3, spec.DModel);
        var error = await Assert.ThrowsAsync<TensorValidationException>(() => cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("tiny", 0))
            .Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)) { TokenIds = [1, 2] }));
        Assert.Contains("2 token ids for 3 rows", error.Message);
    }
}
