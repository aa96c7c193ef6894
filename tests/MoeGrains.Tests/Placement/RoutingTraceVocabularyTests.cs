using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Offload;
using MoeGrains.Placement;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Placement;

/// <summary>The rows' vocabulary token ids through the trace pipeline, and the routing-path predictor trained from them.</summary>
public sealed class RoutingTraceVocabularyTests
{
    [Fact]
    public async Task Vocabulary_ids_survive_the_layer_grain_the_collector_the_export_and_train_the_predictor()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 6, layers: 3, experts: 4);
        await using var cluster = await ModelClusters.StartAsync(2, checkpoint, silo: s => s.AddRoutingTraces(o => o.SamplingRate = 1.0));
        var tokenizer = TextTokenizers.FromMetadata(SafeTensorsFile.Open(checkpoint).Metadata);

        // Three windows fed concurrently through their own sessions (one Append each, as the cluster-trained predictor does).
        string[] texts = ["the quick brown fox", "a stitch in time saves", "fortune favours the bold"];
        var windows = texts.Select(t => tokenizer.Encode(t).Select(i => (long)i).ToArray()).ToArray();
        var fed = new Dictionary<long, long>(); // trace id -> vocabulary id
        await Task.WhenAll(windows.Select(async (w, i) =>
        {
            var key = IDecoderSessionGrain.Key("lm", $"v{i}");
            var session = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(key);
            await session.Append(w, null);
            await session.Close();
        }));
        for (var i = 0; i < windows.Length; i++)
        {
            for (var p = 0; p < windows[i].Length; p++) fed[RoutingTraces.TokenId(IDecoderSessionGrain.Key("lm", $"v{i}"), p)] = windows[i][p];
        }

        // A context-coherent session: its prompt takes the layer grains, its decoded tokens travel with their vocabulary id.
        var coherentKey = IDecoderSessionGrain.Key("lm", "cv");
        var coherent = cluster.GrainFactory.GetGrain<ICoherentDecoderSessionGrain>(coherentKey);
        var prompt = windows[0];
        var step = await coherent.Append(prompt, null);
        for (var p = 0; p < prompt.Length; p++) fed[RoutingTraces.TokenId(coherentKey, p)] = prompt[p];
        for (var i = 0; i < 4; i++)
        {
            long next = Array.IndexOf(step.Logits, step.Logits.Max());
            fed[RoutingTraces.TokenId(coherentKey, prompt.Length + i)] = next;
            step = await coherent.Append([next], null);
        }
        await coherent.Close();

        // Collected through the stream, every layer of every token (layers arrive as separate events).
        var collector = cluster.GrainFactory.GetGrain<IRoutingTraceGrain>("lm");
        IReadOnlyList<TokenRoute> routes = [];
        RoutingTraceExport export = null!;
        for (var wait = 0; wait < 300; wait++)
        {
            export = await collector.Export();
            routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes.csv");
            if (routes.Count == fed.Count && routes.All(r => r.Layers.Count == 3)) break;
            await Task.Delay(50);
        }
        Assert.StartsWith("token,vocab,layer_0,layer_1,layer_2", export.RoutesCsv, StringComparison.Ordinal);
        Assert.Equal(fed.Keys.Order(), routes.Select(r => r.Token));
        Assert.All(routes, r => Assert.Equal(fed[r.Token], r.Vocabulary));

        // The predictor from the exported routes: every token complete, each with its own table.
        var predictor = RoutingPathPredictor.FromTokenRoutes(routes, layers: 3, experts: 4, topK: 2);
        Assert.Equal(fed.Count, predictor.Observed);
        Assert.Equal(0, predictor.Skipped);
        Assert.Equal(fed.Count, predictor.ObservedWithToken);
        Assert.Equal(fed.Values.Distinct().Count(), predictor.TokensKnown);
        // A token seen in the traces has its own table: not the marginal.
        var token = windows[1][0];
        var own = predictor.ForToken(token, 0);
        Assert.NotEqual(predictor.Marginal(0), own);
        var firstRoute = routes.First(r => r.Vocabulary == token).Layers[0].Experts;
        Assert.All(firstRoute, e => Assert.True(own[e] > predictor.Marginal(0)[e] || own[e] == 1, $"expert {e}: {own[e]} vs marginal {predictor.Marginal(0)[e]}"));
    }

    [Fact]
    public void Routes_files_with_and_without_the_vocab_column_parse_and_incomplete_tokens_are_skipped()
    {
        // An old file, without the column: vocabulary ids are unknown.
        const string old = "token,layer_0,layer_1\n5,1:0.6 2:0.4,0:0.5 3:0.5\n6,0:1,\n";
        var routes = TokenRouteFile.Read(new StringReader(old), "old.csv");
        Assert.Equal(2, routes.Count);
        Assert.All(routes, r => Assert.Equal(-1, r.Vocabulary));
        Assert.Equal([1, 2], routes[0].Layers[0].Experts);
        var fromOld = RoutingPathPredictor.FromTokenRoutes(routes, layers: 2, experts: 4, topK: 2);
        Assert.Equal(1, fromOld.Observed);
        Assert.Equal(1, fromOld.Skipped); // token 6 misses layer 1
        Assert.Equal(0, fromOld.TokensKnown);

        // Written without vocabulary ids, the file is what it was; with them, the column appears and reads back.
        using (var w = new StringWriter())
        {
            TokenRouteFile.WriteCsv(w, [.. routes]);
            Assert.StartsWith("token,layer_0,layer_1\n", w.ToString().ReplaceLineEndings("\n"), StringComparison.Ordinal);
        }
        var withVocab = routes.Select((r, i) => r with { Vocabulary = i == 0 ? 42 : -1 }).ToList();
        using (var w = new StringWriter())
        {
            TokenRouteFile.WriteCsv(w, withVocab);
            var text = w.ToString();
            Assert.StartsWith("token,vocab,layer_0,layer_1", text, StringComparison.Ordinal);
            var back = TokenRouteFile.Read(new StringReader(text), "new.csv");
            Assert.Equal([42L, -1L], back.Select(r => r.Vocabulary));
            Assert.Equal(routes.SelectMany(r => r.Layers.SelectMany(l => l.Experts)), back.SelectMany(r => r.Layers.SelectMany(l => l.Experts)));
        }
        using (var w = new StringWriter())
        {
            TokenRouteFile.WriteJsonLines(w, withVocab);
            var back = TokenRouteFile.Read(new StringReader(w.ToString()), "new.jsonl");
            Assert.Equal([42L, -1L], back.Select(r => r.Vocabulary));
        }
        // An empty vocab cell is unknown; a bad one names the line.
        Assert.Equal(-1, TokenRouteFile.Read(new StringReader("token,vocab,layer_0\n1,,2:1\n"), "x.csv").Single().Vocabulary);
        var error = Assert.Throws<RoutingTraceFormatException>(() => TokenRouteFile.Read(new StringReader("token,vocab,layer_0\n1,x,2:1\n"), "x.csv"));
        Assert.Contains("vocab", error.Message, StringComparison.Ordinal);

        // A route of another model is an error, not a silent skip.
        Assert.Throws<ArgumentException>(() => RoutingPathPredictor.FromTokenRoutes(routes, layers: 2, experts: 3, topK: 2));
        Assert.Throws<ArgumentException>(() => RoutingPathPredictor.FromTokenRoutes(routes, layers: 1, experts: 4, topK: 2));
    }

    [Fact]
    public async Task A_vocabulary_of_the_wrong_length_gets_a_typed_error_naming_it()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = dir.File("tiny.safetensors");
        var spec = TinyModel.Create(checkpoint, layers: 1, experts: 4);
        await using var cluster = await ModelClusters.StartAsync(1, checkpoint, silo: s => s.AddRoutingTraces(), model: "tiny");
        using var hidden = randn(3, spec.DModel);
        var layer = cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("tiny", 0));
        var error = await Assert.ThrowsAsync<TensorValidationException>(() =>
            layer.Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)) { TokenIds = [1, 2, 3], Vocabulary = [7, 8] }));
        Assert.Contains("Vocabulary", error.Message, StringComparison.Ordinal);
        Assert.Contains("2 vocabulary token ids for 3 rows", error.Message, StringComparison.Ordinal);
        // The right length is fine, with or without trace ids.
        var ok = await layer.Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)) { TokenIds = [1, 2, 3], Vocabulary = [7, 8, 9] });
        Assert.Empty(ok.FailedExperts);
        ok = await layer.Forward(new MoeLayerRequest(WireTensor.FromTensor(hidden)) { Vocabulary = [7, 8, 9] });
        Assert.Empty(ok.FailedExperts);
    }

    [Fact]
    public async Task The_coalescer_merges_vocabulary_ids_in_row_order_and_keeps_requests_without_them_apart()
    {
        var coalescer = new LayerRequestCoalescer();
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var seen = new List<(long Rows, long[]? Vocabulary, long[]? Ids)>();
        async Task<MoeLayerResult> Pass(MoeLayerRequest r, CancellationToken ct)
        {
            int count;
            lock (seen)
            {
                seen.Add((r.Hidden.Shape[0], r.Vocabulary, r.TokenIds));
                count = seen.Count;
            }
            if (count == 1) await release.Task;
            using var x = r.Hidden.ToTensor(CPU);
            return new MoeLayerResult(WireTensor.FromTensor(x), [], "here", 0, 1, []);
        }
        MoeLayerRequest Request(int rows, long first, bool vocabulary)
        {
            using var t = full(rows, 4, (float)first);
            var ids = Enumerable.Range(0, rows).Select(i => first + i).ToArray();
            return new MoeLayerRequest(WireTensor.FromTensor(t)) { TokenIds = ids, Vocabulary = vocabulary ? [.. ids.Select(i => i * 10)] : null };
        }

        var busy = coalescer.RunAsync("m/0", Request(1, 0, true), Pass, 64, InlineLane.Instance, CancellationToken.None);
        var a = coalescer.RunAsync("m/0", Request(2, 1, true), Pass, 64, InlineLane.Instance, CancellationToken.None);
        var b = coalescer.RunAsync("m/0", Request(3, 3, true), Pass, 64, InlineLane.Instance, CancellationToken.None);
        // Without vocabulary ids: another merge key, run at once.
        var apart = await coalescer.RunAsync("m/0", Request(2, 6, false), Pass, 64, InlineLane.Instance, CancellationToken.None);
        Assert.Equal(1, apart.MergedRequests);
        release.SetResult();
        await busy;
        var merged = await Task.WhenAll(a, b);
        Assert.All(merged, r => Assert.Equal(2, r.MergedRequests));
        var shared = seen.Single(s => s.Rows == 5);
        Assert.Equal([1L, 2, 3, 4, 5], shared.Ids!);
        Assert.Equal([10L, 20, 30, 40, 50], shared.Vocabulary!);
        Assert.Null(seen.Single(s => s.Rows == 2).Vocabulary);
    }
}
