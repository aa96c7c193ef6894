using CsCheck;
using MoeGrains.Placement;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Placement;

public sealed class RoutingTraceTests
{
    private static readonly RoutingTraceFilter Top1 = new(Selection: "top1");

    [Fact]
    public void The_mixtral_cross_layer_counts_load_with_their_layers_experts_and_totals()
    {
        var trace = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, Top1);
        Assert.Equal([0, 7, 15], trace.Layers);
        Assert.Equal(8, trace.Experts);
        Assert.Equal([(0, 7), (7, 15)], trace.Transitions.Select(t => (t.LayerFrom, t.LayerTo)));
        // Five domains of top-1 routes: every token counted once per transition.
        Assert.All(trace.Transitions, t => Assert.Equal(1_044_480, t.Total));
        Assert.Equal(136_390, trace.Transitions[0].Counts.AsSpan(0, 8).ToArray().Sum());
        Assert.Equal(6_155, trace.Transitions[0].Counts[0 * 8 + 0]);

        var arxiv = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, Top1 with { Domain = "arxiv" });
        Assert.All(arxiv.Transitions, t => Assert.Equal(208_896, t.Total));
    }

    [Fact]
    public void A_counts_file_that_mixes_selections_must_be_filtered_to_one()
    {
        var error = Assert.Throws<RoutingTraceFormatException>(() => RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts));
        Assert.Contains("top1, top2", error.Message);
        var missing = Assert.Throws<RoutingTraceFormatException>(() => RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, new(Selection: "top3")));
        Assert.Contains("no row matches", missing.Message);
    }

    [Fact]
    public void Affinity_rows_of_the_real_trace_sum_to_one_and_show_some_concentration()
    {
        var trace = RoutingTrace.Load(PlacementData.MixtralCrossLayerCounts, Top1);
        foreach (var t in trace.Transitions)
        {
            var affinity = t.Affinity();
            Assert.All(affinity, row => Assert.Equal(1.0, row.Sum(), 12));
            Assert.All(affinity, row => Assert.All(row, p => Assert.InRange(p, 0, 1)));
            // Non-adjacent layers: weak but real affinity, above the uniform 1/8.
            Assert.InRange(t.Concentration(), 0.13, 0.5);
        }
    }

    [Fact]
    public void Affinity_rows_always_sum_to_one_even_for_experts_never_seen()
    {
        Gen.Int[1, 6].SelectMany(n => Gen.Int[0, 3].Select(Gen.Int[0, 50]).Array[n * n].Select(c => (n, c))).Sample((n, raw) =>
        {
            // Gen.Int[0,3] picks zero counts often, so whole rows are empty in many samples.
            var counts = raw.Select(x => x.Item1 == 0 ? 0.0 : x.Item2).ToArray();
            var affinity = new LayerTransition(0, 1, counts).Affinity();
            Assert.Equal(n, affinity.Length);
            Assert.All(affinity, row => Assert.Equal(1.0, row.Sum(), 12));
        }, iter: 200);
    }

    [Fact]
    public void Token_routes_in_csv_and_json_lines_give_the_same_counts()
    {
        using var temp = TestPaths.Temp();
        var csv = temp.File("routes.csv");
        File.WriteAllLines(csv,
        [
            "token,layer_0,layer_1,layer_3",
            "0,3:0.6 1:0.4,2:1,0",
            "1,3,2 5,",
            "2,,4,4",
        ]);
        var jsonl = temp.File("routes.jsonl");
        File.WriteAllLines(jsonl,
        [
            """{"token":0,"layers":[0,1,3],"experts":[[3,1],[2],[0]],"weights":[[0.6,0.4],[1],[1]]}""",
            """{"token":1,"layers":[0,1],"experts":[[3],[2,5]]}""",
            """{"token":2,"layers":[1,3],"experts":[[4],[4]]}""",
        ]);
        var a = RoutingTrace.Load(csv, experts: 6);
        var b = RoutingTrace.Load(jsonl, experts: 6);
        Assert.Equal([0, 1, 3], a.Layers);
        Assert.Equal(6, a.Experts);
        foreach (var (x, y) in a.Transitions.Zip(b.Transitions))
        {
            Assert.Equal((x.LayerFrom, x.LayerTo), (y.LayerFrom, y.LayerTo));
            Assert.Equal(x.Counts, y.Counts);
        }
        var t01 = a.Transitions[0];
        // token 0: {3,1} -> {2}; token 1: {3} -> {2,5}
        Assert.Equal(2, t01.Counts[3 * 6 + 2]);
        Assert.Equal(1, t01.Counts[1 * 6 + 2]);
        Assert.Equal(1, t01.Counts[3 * 6 + 5]);
        Assert.Equal(4, t01.Total);
        var t13 = a.Transitions[1];
        Assert.Equal(1, t13.Counts[2 * 6 + 0]);
        Assert.Equal(1, t13.Counts[4 * 6 + 4]);

        var routes = TokenRouteFile.Read(csv);
        Assert.Equal([0.6f, 0.4f], routes[0].Layers[0].Weights);
        Assert.Equal([0.5f, 0.5f], routes[1].Layers[1].Weights);
    }

    [Fact]
    public void Written_routes_and_counts_read_back_the_same()
    {
        using var temp = TestPaths.Temp();
        var random = new Random(5);
        var routes = Enumerable.Range(0, 200).Select(t => new TokenRoute(t, [.. new[] { 0, 2, 5 }.Select(l =>
        {
            var experts = Enumerable.Range(0, 8).OrderBy(_ => random.Next()).Take(2).ToArray();
            var w = (float)random.NextDouble();
            return new LayerRoute(l, experts, [w, 1 - w]);
        })])).ToList();
        var csv = temp.File("r.csv");
        var jsonl = temp.File("r.jsonl");
        using (var w = new StreamWriter(csv)) TokenRouteFile.WriteCsv(w, routes);
        using (var w = new StreamWriter(jsonl)) TokenRouteFile.WriteJsonLines(w, routes);
        var expected = RoutingTrace.FromTokenRoutes(routes, 8);
        foreach (var path in new[] { csv, jsonl })
        {
            var back = TokenRouteFile.Read(path);
            Assert.Equal(routes.Select(r => r.Token), back.Select(r => r.Token));
            Assert.Equal(routes.SelectMany(r => r.Layers.SelectMany(l => l.Experts)), back.SelectMany(r => r.Layers.SelectMany(l => l.Experts)));
            Assert.Equal(expected.Transitions.SelectMany(t => t.Counts), RoutingTrace.Load(path, experts: 8).Transitions.SelectMany(t => t.Counts));
        }

        var counts = temp.File("counts.csv");
        using (var w = new StreamWriter(counts)) CrossLayerCountsFile.Write(w, expected, "m", "top2", "synthetic");
        var reread = RoutingTrace.Load(counts, experts: 8);
        Assert.Equal(expected.Transitions.SelectMany(t => t.Counts), reread.Transitions.SelectMany(t => t.Counts));
    }

    [Theory]
    [InlineData("model,selection,domain,layer_from,layer_to,expert_from,expert_to,count\nm,top1,d,0,1,0,0,5\nm,top1,d,0,1,0,x,5\n", 3, "expert_to")]
    [InlineData("model,selection,domain,layer_from,layer_to,expert_from,expert_to,count\nm,top1,d,0,1,0,0,5\nm,top1,d,0,1,0,1\n", 3, "8 comma-separated")]
    [InlineData("model,selection,domain,layer_from,layer_to,expert_from,expert_to,count\nm,top1,d,0,1,0,0,-2\n", 2, "count")]
    [InlineData("model,selection,domain,layer_from,layer_to,expert_from,expert_to,count\nm,top1,d,3,1,0,0,2\n", 2, "layer_to")]
    [InlineData("token,layer_0,layer_1\n0,1,2\n1,1:x,2\n", 3, "weight")]
    [InlineData("token,layer_0,layer_1\n0,1,2\n1,1 1,2\n", 3, "twice")]
    [InlineData("token,layer_0,layer_1\n0,1,2,3\n", 2, "fields")]
    [InlineData("token,layer_1,layer_0\n0,1,2\n", 1, "ascending")]
    [InlineData("{\"token\":0,\"layers\":[0,1],\"experts\":[[1],[2]]}\n{\"token\":1,\"layers\":[0,1],\"experts\":[[1]]}\n", 2, "must match")]
    [InlineData("{\"token\":0,\"layers\":[0,1],\"experts\":[[1],[2]]}\n{\"token\":1,\"layers\":[0,1],\"experts\":[[1],[2]\n", 2, "not a token route")]
    [InlineData("expert,silo\n0,1\n", 1, "unknown trace form")]
    public void Malformed_trace_files_get_an_error_naming_the_line(string text, int line, string fragment)
    {
        using var temp = TestPaths.Temp();
        var path = temp.File("bad.csv");
        File.WriteAllText(path, text);
        var error = Assert.Throws<RoutingTraceFormatException>(() => RoutingTrace.Load(path));
        Assert.Equal(line, error.Line);
        Assert.Contains($"line {line}:", error.Message);
        Assert.Contains(fragment, error.Message);
    }
}
