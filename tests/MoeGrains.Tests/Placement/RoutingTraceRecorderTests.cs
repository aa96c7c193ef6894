using MoeGrains.Placement;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Placement;

public sealed class RoutingTraceRecorderTests
{
    [Fact]
    public void A_sampled_token_is_recorded_at_every_layer_and_the_share_matches_the_rate()
    {
        var recorder = new RoutingTraceRecorder(samplingRate: 0.25);
        var tokens = Enumerable.Range(0, 8000).Select(t => (long)t).ToArray();
        for (var layer = 0; layer < 3; layer++)
        {
            var experts = tokens.SelectMany(t => new[] { (int)((t + layer) % 8), (int)((t * 3 + layer + 1) % 8) }).ToArray();
            var weights = tokens.SelectMany(_ => new[] { 0.75f, 0.25f }).ToArray();
            recorder.RecordBatch(layer, tokens, 2, experts, weights);
        }
        var routes = recorder.Routes();
        Assert.InRange(routes.Count, 1800, 2200);
        Assert.All(routes, r => Assert.Equal([0, 1, 2], r.Layers.Select(l => l.Layer)));
        Assert.All(routes, r => Assert.True(recorder.IsSampled(r.Token)));
        // Another recorder (another silo) with the same settings samples the same tokens.
        var other = new RoutingTraceRecorder(samplingRate: 0.25);
        Assert.Equal(routes.Select(r => r.Token), tokens.Where(other.IsSampled));

        var trace = recorder.ToTrace(8);
        Assert.Equal([0, 1, 2], trace.Layers);
        Assert.All(trace.Transitions, t => Assert.Equal(routes.Count * 4, t.Total)); // 2 x 2 expert pairs per token

        using var temp = TestPaths.Temp();
        var path = temp.File("routes.csv");
        using (var writer = new StreamWriter(path)) TokenRouteFile.WriteCsv(writer, routes);
        Assert.Equal(trace.Transitions.SelectMany(t => t.Counts), RoutingTrace.Load(path, experts: 8).Transitions.SelectMany(t => t.Counts));
    }

    [Fact]
    public void The_recorder_is_bounded_and_rates_zero_and_one_are_exact()
    {
        var full = new RoutingTraceRecorder(samplingRate: 1, maxTokens: 10);
        for (var t = 0; t < 25; t++) full.Record(t, 0, [1], [1f]);
        Assert.Equal(10, full.Count);
        Assert.Equal(15, full.Dropped);
        full.Record(3, 1, [2], [1f]); // a kept token still gets its later layers
        Assert.Equal(2, full.Routes().Single(r => r.Token == 3).Layers.Count);

        var none = new RoutingTraceRecorder(samplingRate: 0);
        for (var t = 0; t < 100; t++) none.Record(t, 0, [1], [1f]);
        Assert.Equal(0, none.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => new RoutingTraceRecorder(samplingRate: 1.5));
        Assert.Throws<ArgumentException>(() => full.Record(1, 0, [1, 2], [1f]));
    }
}
