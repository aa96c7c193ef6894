using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using HdrHistogram;
using MoeGrains.Contracts;
using MoeGrains.Diagnostics;
using MoeGrains.Hosting;
using MoeGrains.Models;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// RELIABILITY.md, load row: C concurrent clients for S seconds against a local cluster. Reports throughput, p50/p99
/// (HdrHistogram), errors, membership before/after and memory growth, beside the single-client p50.
/// </summary>
/// <remarks>
/// The clients first run a warm-up under the same load (not measured: allocator pools and batch sizes settle), then the
/// measured S seconds. Memory growth compares the settled working set (managed heap collected, C heap trimmed) after the
/// warm-up with the same at the end: what a leak would show. Growth from the quiet, single-client start is reported too.
/// </remarks>
internal static class LoadBenchCommand
{
    internal sealed record LoadReport(string Benchmark, int Clients, double Seconds, int Silos, int TokensPerRequest, long Requests, long Errors,
        double RequestsPerS, double TokensPerS, double SingleClientP50Ms, double P50Ms, double P90Ms, double P99Ms, double MaxMs,
        double P99OverSingleClientP50, int SilosBefore, int SilosAfter, double WarmupSeconds, long WorkingSetQuietBytes, long WorkingSetStartBytes,
        long WorkingSetEndBytes, double MemoryGrowthPct, double MemoryGrowthFromQuietPct, double[] WorkingSetEvery5sMib, int MaxBatchTokens, double MeanRequestsPerLayerPass,
        double MeanCallsPerExpertPass, string[] ErrorKinds, string Machine);

    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var clients = new Option<int>("--clients") { Description = "Concurrent clients", DefaultValueFactory = _ => 8 };
        var seconds = new Option<int>("--seconds") { Description = "Duration of the loaded phase", DefaultValueFactory = _ => 60 };
        var silos = new Option<int>("--silos") { Description = "Silos in the local cluster", DefaultValueFactory = _ => 2 };
        var tokens = new Option<int>("--tokens") { Description = "Tokens per request", DefaultValueFactory = _ => 64 };
        var batch = new Option<int>("--max-batch-tokens") { Description = "Continuous batching per expert (MoeGrains:MaxBatchTokens; 0 = off)", DefaultValueFactory = _ => 4096 };
        var command = new Command("load", "Concurrent clients against a local cluster: throughput, p50, p99, errors, memory growth")
        {
            json, clients, seconds, silos, tokens, batch,
        };
        command.SetAction(async (parse, ct) =>
        {
            var (c, s, n, t, b) = (parse.GetValue(clients), parse.GetValue(seconds), parse.GetValue(silos), parse.GetValue(tokens), parse.GetValue(batch));
            if (c < 1 || s < 1 || n < 1 || t < 1 || t > 65_536 || b < 0)
            {
                Console.Error.WriteLine("--clients, --seconds and --silos must be positive; --tokens between 1 and 65536; --max-batch-tokens 0 or more.");
                return 2;
            }
            var report = await Run(c, s, n, t, b, !parse.GetValue(json), ct);
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(report, BenchCommands.JsonOptions));
            }
            else
            {
                var table = new Table().Title($"{report.Clients} clients for {report.Seconds:F0} s, {report.TokensPerRequest} tokens per request, {report.Silos} silos").AddColumns("measure", "value");
                table.AddRow("requests (errors)", $"{report.Requests} ({report.Errors})");
                table.AddRow("throughput", $"{report.RequestsPerS:F1} req/s, {report.TokensPerS:F0} tokens/s");
                table.AddRow("single-client p50", $"{report.SingleClientP50Ms:F1} ms");
                table.AddRow("p50 / p90 / p99 / max", $"{report.P50Ms:F1} / {report.P90Ms:F1} / {report.P99Ms:F1} / {report.MaxMs:F1} ms");
                table.AddRow("p99 / single-client p50", $"{report.P99OverSingleClientP50:F2} (target ≤ 8)");
                table.AddRow("requests per layer pass / calls per expert pass", $"{report.MeanRequestsPerLayerPass:F2} / {report.MeanCallsPerExpertPass:F2} (continuous batching up to {report.MaxBatchTokens} tokens)");
                table.AddRow("silos before / after", $"{report.SilosBefore} / {report.SilosAfter}");
                table.AddRow("working set over the measured run", $"{report.WorkingSetStartBytes / 1048576.0:F0} → {report.WorkingSetEndBytes / 1048576.0:F0} MiB ({report.MemoryGrowthPct:+0.0;-0.0}%, target < 10%)");
                table.AddRow("working set every 5 s under load", string.Join(" ", report.WorkingSetEvery5sMib.Select(m => $"{m:F0}")) + " MiB");
                table.AddRow($"working set from the quiet start (before a {report.WarmupSeconds:F0} s warm-up)", $"{report.WorkingSetQuietBytes / 1048576.0:F0} → {report.WorkingSetEndBytes / 1048576.0:F0} MiB ({report.MemoryGrowthFromQuietPct:+0.0;-0.0}%)");
                AnsiConsole.Write(table);
            }
            return report.Errors == 0 ? 0 : 1;
        });
        return command;
    }

    private static async Task<LoadReport> Run(int clients, int seconds, int silos, int tokens, int maxBatchTokens, bool progress, CancellationToken ct)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"moegrains-load-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "load.safetensors");
        try
        {
            var spec = new ModelSpec("load", 1, 8, 256, 512, 2, "swiglu", "topk");
            CheckpointCommand.Create(spec, path, 7);
            await using var cluster = await LocalCluster.StartAsync(silos, (_, silo) => silo.AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.PluginFolder = CliPaths.Plugins;
                o.Models["load"] = path;
                o.MaxBatchTokens = maxBatchTokens;
            }), cancellationToken: ct);
            var info = cluster.GrainFactory.GetGrain<IClusterInfoGrain>(0);
            var layer = cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("load", 0));
            using var hidden = randn(new long[] { tokens, spec.DModel }, generator: new Generator(3));
            var request = new MoeLayerRequest(WireTensor.FromTensor(hidden));
            var silosBefore = (await info.Silos()).Length;

            // Warm up, then the single-client baseline.
            for (var i = 0; i < 5; i++) await layer.Forward(request, ct);
            var single = new LongHistogram(TimeStamp.Minutes(10), 3);
            var baseline = Stopwatch.StartNew();
            while (baseline.Elapsed < TimeSpan.FromSeconds(Math.Min(10, Math.Max(3, seconds / 6))))
            {
                var t0 = Stopwatch.GetTimestamp();
                await layer.Forward(request, ct);
                single.RecordValue(Stopwatch.GetTimestamp() - t0);
            }
            var memoryQuiet = NativeHeap.SettledWorkingSet();
            var warmup = Math.Min(10, Math.Max(2, seconds / 6.0));
            if (progress) AnsiConsole.MarkupLine($"[grey]single-client p50 {Ms(single, 50):F1} ms; {clients} clients: {warmup:F0} s warm-up, then {seconds} s measured...[/]");
            var warm = new LoadCounts();
            await Load(layer, request, clients, TimeSpan.FromSeconds(warmup), warm, ct);
            var memoryStart = NativeHeap.SettledWorkingSet();

            long passes = 0, passCalls = 0;
            using var listener = new System.Diagnostics.Metrics.MeterListener();
            listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == Diagnostics.MoeGrainsMetrics.MeterName && i.Name == "moegrains.expert.batch_calls") l.EnableMeasurementEvents(i); };
            listener.SetMeasurementEventCallback<long>((_, v, _, _) => { Interlocked.Increment(ref passes); Interlocked.Add(ref passCalls, v); });
            listener.Start();
            var measured = new LoadCounts();
            // The raw working set every 5 s under load (no collection, so the clients are not paused): a plateau or a slope.
            var series = new List<double>();
            using var sampling = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var sampler = Task.Run(async () =>
            {
                using var timer = new PeriodicTimer(TimeSpan.FromSeconds(5));
                while (await timer.WaitForNextTickAsync(sampling.Token).ConfigureAwait(false))
                {
                    using var self = Process.GetCurrentProcess();
                    lock (series) series.Add(Math.Round(self.WorkingSet64 / 1048576.0, 1));
                }
            }, sampling.Token);
            var elapsed = await Load(layer, request, clients, TimeSpan.FromSeconds(seconds), measured, ct);
            await sampling.CancelAsync();
            try { await sampler; } catch (OperationCanceledException) { }
            listener.Dispose();
            var memoryEnd = NativeHeap.SettledWorkingSet();
            // Errors count in the warm-up too: zero means zero from the first loaded request.
            var (loaded, requests, errors, shares) = (measured.Latencies, measured.Requests, measured.Errors + warm.Errors, measured.Shares);
            foreach (var (kind, n) in warm.Kinds) measured.Kinds.AddOrUpdate(kind, n, (_, v) => v + n);
            var silosAfter = (await info.Silos()).Length;
            var p50Single = Ms(single, 50);
            return new LoadReport("load", clients, elapsed, silos, tokens, requests, errors, requests / elapsed, requests * tokens / elapsed,
                p50Single, Ms(loaded, 50), Ms(loaded, 90), Ms(loaded, 99), loaded.GetMaxValue() * 1000.0 / Stopwatch.Frequency,
                Ms(loaded, 99) / p50Single, silosBefore, silosAfter, warmup, memoryQuiet, memoryStart, memoryEnd, 100.0 * (memoryEnd - memoryStart) / memoryStart,
                100.0 * (memoryEnd - memoryQuiet) / memoryQuiet, [.. series],
                maxBatchTokens, shares == 0 ? 1 : requests * 1_000_000.0 / shares, passes == 0 ? 1 : (double)passCalls / passes,
                [.. measured.Kinds.Select(k => $"{k.Key}: {k.Value}")], BenchCommands.Machine());
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    private sealed class LoadCounts
    {
        public readonly LongHistogram Latencies = new(TimeStamp.Minutes(10), 3);
        public long Requests, Errors, Shares;
        public readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> Kinds = new();
    }

    /// <summary><paramref name="clients"/> clients calling the layer back to back for <paramref name="duration"/>; counted into <paramref name="counts"/>. Returns the seconds it ran.</summary>
    private static async Task<double> Load(IMoeLayerGrain layer, MoeLayerRequest request, int clients, TimeSpan duration, LoadCounts counts, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, clients).Select(_ => Task.Run(async () =>
        {
            var local = new LongHistogram(TimeStamp.Minutes(10), 3);
            while (sw.Elapsed < duration && !ct.IsCancellationRequested)
            {
                var t0 = Stopwatch.GetTimestamp();
                try
                {
                    var answer = await layer.Forward(request, ct);
                    local.RecordValue(Stopwatch.GetTimestamp() - t0);
                    Interlocked.Increment(ref counts.Requests);
                    // A pass shared by m requests counts 1/m for each: passes = sum of 1/m (in millionths).
                    Interlocked.Add(ref counts.Shares, 1_000_000 / answer.MergedRequests);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    Interlocked.Increment(ref counts.Errors);
                    counts.Kinds.AddOrUpdate(e.GetType().Name, 1, (_, v) => v + 1);
                }
            }
            lock (counts.Latencies) counts.Latencies.Add(local);
        }, ct)).ToArray();
        await Task.WhenAll(workers);
        return sw.Elapsed.TotalSeconds;
    }

    private static double Ms(HistogramBase h, double percentile) => h.TotalCount == 0 ? 0 : h.GetValueAtPercentile(percentile) * 1000.0 / Stopwatch.Frequency;
}
