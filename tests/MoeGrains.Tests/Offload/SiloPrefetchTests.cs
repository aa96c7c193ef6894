using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Offload;
using MoeGrains.Placement;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;
using Xunit.Abstractions;

namespace MoeGrains.Tests.Offload;

/// <summary>Silo-side expert prefetch: the predictive policy with a routing-path predictor from the cluster's routing traces.</summary>
public sealed class SiloPrefetchTests(ITestOutputHelper output)
{
    private const int LAYERS = 3;
    private const int EXPERTS = 8;
    private const int BUDGET = 4; // of the 12 experts each of the 2 silos holds

    private static readonly long[][] Prompts = [[3, 7, 1, 9, 4, 12, 5, 2], [8, 2, 6, 11, 0, 3, 10, 4]];
    private const int NEW_TOKENS = 16;

    // Training text, teacher-forced: windows of the tiny model's corpus, fed through their own sessions.
    private static long[][] Windows(string checkpoint)
    {
        var tokenizer = MoeGrains.Plugins.Mixtral.Tokenizers.TextTokenizers.FromMetadata(MoeGrains.Checkpoints.SafeTensorsFile.Open(checkpoint).Metadata);
        var ids = tokenizer.Encode(TinyLanguageModel.Corpus(2)).Select(t => (long)t).ToArray();
        return [.. Enumerable.Range(0, 8).Select(i => ids.Skip(i * 23).Take(30).ToArray())];
    }

    private static async Task FeedAsync(LocalCluster cluster, long[][] windows, string prefix)
    {
        await Task.WhenAll(windows.Select(async (w, i) =>
        {
            var session = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", $"{prefix}{i}"));
            await session.Append(w, null);
            await session.Close();
        }));
    }

    // Greedy decoding of each prompt, one session after the other (no batching across sessions: the same computations).
    private static async Task<List<(long[] Tokens, float[] Logits)>> GreedyAsync(LocalCluster cluster, string prefix)
    {
        var runs = new List<(long[], float[])>();
        for (var i = 0; i < Prompts.Length; i++)
        {
            var session = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", $"{prefix}{i}"));
            var step = await session.Append(Prompts[i], null);
            var tokens = new List<long>();
            for (var t = 0; t < NEW_TOKENS; t++)
            {
                long next = Array.IndexOf(step.Logits, step.Logits.Max());
                tokens.Add(next);
                step = await session.Append([next], null);
            }
            await session.Close();
            runs.Add(([.. tokens], step.Logits));
        }
        return runs;
    }

    private static Task<LocalCluster> StartAsync(int silos, string checkpoint, Action<MoeGrainsOptions>? offload, bool traces, TempFolder dir) =>
        ModelClusters.StartAsync(silos, checkpoint, o =>
        {
            o.ExpertTimeoutMs = 20_000;
            o.Offload.StoreRoot = dir.File("stores");
            offload?.Invoke(o);
        }, silo => { if (traces) silo.AddRoutingTraces(o => o.SamplingRate = 1.0); });

    private static async Task<string> ExportCompleteRoutesAsync(LocalCluster cluster)
    {
        var expected = cluster.Silos.Sum(s => s.Services.GetRequiredService<RoutingTraceSink>().Recorder("lm").Routes().Sum(r => r.Layers.Count));
        var collector = cluster.GrainFactory.GetGrain<IRoutingTraceGrain>("lm");
        var export = await collector.Export();
        for (var wait = 0; TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes").Sum(r => r.Layers.Count) < expected && wait < 200; wait++)
        {
            await Task.Delay(50);
            export = await collector.Export();
        }
        return export.RoutesCsv;
    }

    private static OffloadCacheReport Sum(LocalCluster cluster)
    {
        var reports = cluster.Silos.Select(s => s.Services.GetRequiredService<SiloExpertCache>().Report("x")).ToList();
        return reports[0] with
        {
            Accesses = reports.Sum(r => r.Accesses), Hits = reports.Sum(r => r.Hits), Loads = reports.Sum(r => r.Loads),
            PeakResidentExperts = reports.Max(r => r.PeakResidentExperts),
            PrefetchHintsSent = reports.Sum(r => r.PrefetchHintsSent), PrefetchHintsReceived = reports.Sum(r => r.PrefetchHintsReceived),
            Prefetches = reports.Sum(r => r.Prefetches), PrefetchesUsed = reports.Sum(r => r.PrefetchesUsed), DemandLoads = reports.Sum(r => r.DemandLoads),
        };
    }

    [Fact]
    public async Task Predictive_silos_prefetch_from_a_routes_file_of_the_clusters_traces_and_generate_the_unoffloaded_output()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 17, layers: LAYERS, experts: EXPERTS);
        var windows = Windows(checkpoint);

        // 1. A cluster without offloading records the routes of the training windows (with their vocabulary ids), then
        //    gives the reference output.
        var routesFile = dir.File("routes.csv");
        List<(long[] Tokens, float[] Logits)> expected;
        await using (var plain = await StartAsync(2, checkpoint, null, traces: true, dir))
        {
            await FeedAsync(plain, windows, "train");
            await File.WriteAllTextAsync(routesFile, await ExportCompleteRoutesAsync(plain));
            expected = await GreedyAsync(plain, "ref");
        }
        var routes = TokenRouteFile.Read(routesFile);
        Assert.Equal(windows.Sum(w => w.Length), routes.Count);
        Assert.All(routes, r => Assert.True(r.Vocabulary >= 0));

        // 2. Two silos, each holding at most 4 of its experts, predictive, the predictor from that file.
        await using var cluster = await StartAsync(2, checkpoint, o =>
        {
            o.Offload.DeviceBudgetExperts = BUDGET;
            o.Offload.Policy = "predictive";
            o.Offload.Predictors["lm"] = routesFile;
        }, traces: false, dir);
        var actual = await GreedyAsync(cluster, "off");
        for (var i = 0; i < Prompts.Length; i++)
        {
            Assert.Equal(expected[i].Tokens, actual[i].Tokens);
            Assert.Equal(expected[i].Logits.Length, actual[i].Logits.Length);
            Assert.All(expected[i].Logits.Zip(actual[i].Logits), p => Assert.True(Math.Abs(p.First - p.Second) < 1e-4, $"logit {p.First} vs {p.Second}"));
        }

        // Hints are one-way: wait until every one has been taken (and its read has ended).
        var total = Sum(cluster);
        for (var wait = 0; total.PrefetchHintsReceived < total.PrefetchHintsSent && wait < 100; wait++)
        {
            await Task.Delay(20);
            total = Sum(cluster);
        }
        foreach (var silo in cluster.Silos) silo.Services.GetRequiredService<SiloExpertCache>().Cache!.WaitForPrefetches();
        output.WriteLine($"accesses {total.Accesses}, hits {total.Hits}, loads {total.Loads} (demand {total.DemandLoads}), hints sent {total.PrefetchHintsSent}, " +
            $"received {total.PrefetchHintsReceived}, prefetches {total.Prefetches}, used {total.PrefetchesUsed}, peak {total.PeakResidentExperts}");
        Assert.True(total.PeakResidentExperts <= BUDGET, $"peak {total.PeakResidentExperts} experts resident on a silo");
        Assert.True(total.PrefetchHintsSent > 0, "no prefetch hint was sent");
        Assert.Equal(total.PrefetchHintsSent, total.PrefetchHintsReceived); // one-way hints, all delivered by now
        Assert.True(total.Prefetches > 0, "no hint started a read");
        Assert.True(total.PrefetchesUsed > 0, "no prefetched expert was used");
        Assert.Equal(total.DemandLoads + total.Prefetches, total.Loads);

        // The figures travel through the silo's report grain (new fields, serialized) as /v1/offload reads them.
        var address = cluster.Silos[0].Services.GetRequiredService<ILocalSiloDetails>().SiloAddress.ToString();
        var report = await cluster.GrainFactory.GetGrain<IOffloadCacheGrain>(address).Stats();
        var local = cluster.Silos[0].Services.GetRequiredService<SiloExpertCache>().Report(address);
        Assert.Equal(local.PrefetchHintsSent, report.PrefetchHintsSent);
        Assert.Equal(routes.Count, report.PredictorPaths);
        Assert.True(report.PrefetchHintsSent > 0);
    }

    [Fact]
    public async Task A_silo_with_routing_traces_refreshes_its_predictor_from_the_collector_and_then_prefetches()
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 17, layers: LAYERS, experts: EXPERTS);
        await using var cluster = await StartAsync(2, checkpoint, o =>
        {
            o.Offload.DeviceBudgetExperts = BUDGET;
            o.Offload.Policy = "predictive";
            o.Offload.PredictorRefreshSeconds = 0.2;
        }, traces: true, dir);
        var predictors = cluster.Silos[0].Services.GetRequiredService<SiloRoutePredictors>();
        Assert.Equal(0, predictors.Status("lm").Paths);
        var windows = Windows(checkpoint);
        await FeedAsync(cluster, windows, "train");
        await ExportCompleteRoutesAsync(cluster);

        // The layer grains ask for the predictor at each step; a refresh is due every 0.2 s.
        var session = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", "gen"));
        var step = await session.Append(Prompts[0], null);
        var fed = Prompts[0].Length;
        for (var wait = 0; predictors.Status("lm").Paths < windows.Sum(w => w.Length) && wait < 100; wait++)
        {
            await Task.Delay(100);
        }
        var status = predictors.Status("lm");
        output.WriteLine(status.ToString());
        Assert.Equal("traces", status.Source);
        Assert.True(status.Paths >= windows.Sum(w => w.Length), $"{status.Paths} paths");
        Assert.Equal(0, status.Skipped);

        var before = Sum(cluster);
        for (; fed < 24; fed++)
        {
            step = await session.Append([Array.IndexOf(step.Logits, step.Logits.Max())], null);
        }
        await session.Close();
        var after = Sum(cluster);
        output.WriteLine($"hints {after.PrefetchHintsSent - before.PrefetchHintsSent}, prefetches {after.Prefetches - before.Prefetches}, used {after.PrefetchesUsed - before.PrefetchesUsed}");
        Assert.True(after.PrefetchHintsSent > before.PrefetchHintsSent, "no hint after the predictor arrived");
        Assert.True(after.PeakResidentExperts <= BUDGET);
    }

    [Theory]
    [InlineData("missing", "does not exist")]
    [InlineData("unserved", "is not served")]
    [InlineData("bad-header", "layer_<number>")]
    [InlineData("bad-expert", "expert 9")]
    [InlineData("incomplete", "no token is traced at every one")]
    public async Task A_bad_predictor_setting_stops_the_silo_at_start_naming_it(string kind, string message)
    {
        using var dir = TestPaths.Temp();
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 17, layers: LAYERS, experts: EXPERTS);
        var file = dir.File("routes.csv");
        await File.WriteAllTextAsync(file, kind switch
        {
            "bad-header" => "token,vocab,layers\n1,2,3\n",
            "bad-expert" => "token,vocab,layer_0,layer_1,layer_2\n1,4,9:1,0:1,0:1\n",
            "incomplete" => "token,vocab,layer_0,layer_1,layer_2\n1,4,1:1,,0:1\n",
            _ => "token,vocab,layer_0,layer_1,layer_2\n1,4,1:1,2:1,0:1\n",
        });
        var error = await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await using var cluster = await ModelClusters.StartAsync(1, checkpoint, o =>
            {
                o.Offload.DeviceBudgetExperts = BUDGET;
                o.Offload.Policy = "predictive";
                o.Offload.Predictors[kind == "unserved" ? "other" : "lm"] = kind == "missing" ? dir.File("none.csv") : file;
            });
        });
        Assert.IsType<OptionsValidationException>(error);
        Assert.Contains("MoeGrains:Offload:Predictors:", error.Message, StringComparison.Ordinal);
        Assert.Contains(message, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_next_layers_hints_are_the_likely_experts_above_the_threshold_within_the_room()
    {
        // Expert 0 at layer 0 always leads to expert 3 at layer 1, expert 1 to expert 5.
        var paths = Enumerable.Range(0, 40).Select(i => new RoutePath(i % 2, i % 2 == 0 ? [[0], [3]] : [[1], [5]]));
        var predictor = RoutingPathPredictor.Train(paths, 2, 8, 1);
        var routing = new RoutingResult(2, 1, [0, 1], [1f, 1f]);
        var hints = SiloRoutePredictors.NextLayer(predictor, 0, routing, [0, 1], threshold: 0.25, room: 8);
        Assert.Equal([3, 5], hints.Select(h => h.Expert).Order());
        Assert.Single(SiloRoutePredictors.NextLayer(predictor, 0, routing, [0, 1], threshold: 0.25, room: 1));
        Assert.Empty(SiloRoutePredictors.NextLayer(predictor, 0, routing, null, threshold: 0.25, room: 0));
        Assert.Empty(SiloRoutePredictors.NextLayer(predictor, 1, routing, null, threshold: 0.25, room: 8)); // the last layer
        Assert.Empty(SiloRoutePredictors.NextLayer(predictor, 0, routing, null, threshold: 0.999, room: 8));
    }
}
