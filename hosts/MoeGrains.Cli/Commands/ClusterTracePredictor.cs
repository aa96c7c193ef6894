using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Offload;
using MoeGrains.Placement;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// A routing-path predictor trained from a cluster's own routing traces (issue 8: ExpertFlow's predictor "trained here
/// from the cluster's own routing traces"): a traced local cluster serves the checkpoint as <c>lm</c>, each window of
/// vocabulary token ids is fed through its own decoder session grain (all concurrently), the routes the layer grains
/// recorded (every token sampled, each with its vocabulary id) travel on the routes stream to the collector
/// (<see cref="IRoutingTraceGrain"/>), and the exported routes CSV (<see cref="TokenRouteFile"/>) becomes the predictor
/// (<see cref="RoutingPathPredictor.FromTokenRoutes"/>).
/// </summary>
internal static class ClusterTracePredictor
{
    /// <summary>
    /// Trains the predictor on <paramref name="windows"/> (vocabulary token ids; each at most the model's context) run
    /// through a fresh <paramref name="silos"/>-silo local cluster, stopped before this returns.
    /// </summary>
    /// <returns>
    /// The predictor; <c>Tokens</c>: traced tokens used (a route at every layer); <c>Skipped</c>: traced tokens left out
    /// (a layer missing); <c>Seconds</c>: the whole run, cluster start and stop included.
    /// </returns>
    public static async Task<(RoutingPathPredictor Predictor, int Tokens, int Skipped, double Seconds)> TrainAsync(
        string weightsPath, IReadOnlyList<long[]> windows, int silos, CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(weightsPath);
        ArgumentNullException.ThrowIfNull(windows);
        ArgumentOutOfRangeException.ThrowIfLessThan(silos, 1);
        if (windows.Count == 0 || windows.Any(w => w is null || w.Length == 0))
        {
            throw new ArgumentException("Give at least one window, each with at least one token.", nameof(windows));
        }
        var sw = Stopwatch.StartNew();
        // Every token of every window is kept (the collector's default bound, 100,000 tokens, is raised if the windows need more).
        var tokens = windows.Sum(w => w.Length);
        var maxTokens = Math.Max(RoutingTraceRecorder.DEFAULT_MAX_TOKENS, tokens);
        RoutingPathPredictor predictor;
        await using (var cluster = await LanguageModelBench.StartTracedClusterAsync(silos, weightsPath, samplingRate: 1.0, ct, maxTokens))
        {
            var grains = cluster.GrainFactory;
            var spec = await grains.GetGrain<IClusterInfoGrain>(0).Model("lm");
            var run = Guid.NewGuid().ToString("N")[..8];
            await Task.WhenAll(windows.Select(async (window, i) =>
            {
                var session = grains.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", $"predictor-{run}-{i}"));
                try
                {
                    await session.Append(window, null, ct);
                }
                finally
                {
                    await session.Close();
                }
            }));

            // Each layer's routes arrive as separate stream events: wait until the collector holds every layer of every
            // route the silos recorded, not only every token.
            var collector = await LanguageModelBench.TracesCollectedAsync(cluster, ct);
            var expected = cluster.Silos.Sum(s => s.Services.GetRequiredService<RoutingTraceSink>().Recorder("lm").Routes().Sum(r => r.Layers.Count));
            var export = await collector.Export();
            var routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes stream");
            for (var wait = 0; routes.Sum(r => r.Layers.Count) < expected && wait < 600; wait++)
            {
                await Task.Delay(50, ct);
                export = await collector.Export();
                routes = TokenRouteFile.Read(new StringReader(export.RoutesCsv), "routes stream");
            }
            if (export.Dropped > 0)
            {
                Console.Error.WriteLine($"warning: the trace collector dropped {export.Dropped} tokens (bound {maxTokens})");
            }
            predictor = RoutingPathPredictor.FromTokenRoutes(routes, spec.Layers, spec.Experts, spec.TopK);
        }
        return (predictor, (int)predictor.Observed, (int)predictor.Skipped, sw.Elapsed.TotalSeconds);
    }
}
