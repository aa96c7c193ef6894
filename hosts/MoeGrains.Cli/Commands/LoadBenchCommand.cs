using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using HdrHistogram;
using MoeGrains.Contracts;
using MoeGrains.Hosting;
using MoeGrains.Models;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// RELIABILITY.md, load row: C concurrent clients for S seconds against a local cluster. Reports throughput, p50/p99
/// (HdrHistogram), errors, membership before/after and memory growth, beside the single-client p50.
/// </summary>
internal static class LoadBenchCommand
{
    internal sealed record LoadReport(string Benchmark, int Clients, double Seconds, int Silos, int TokensPerRequest, long Requests, long Errors,
        double RequestsPerS, double TokensPerS, double SingleClientP50Ms, double P50Ms, double P90Ms, double P99Ms, double MaxMs,
        double P99OverSingleClientP50, int SilosBefore, int SilosAfter, long WorkingSetStartBytes, long WorkingSetEndBytes,
        double MemoryGrowthPct, long WorkingSetWarmBytes, double MemoryGrowthAfterWarmupPct, int MaxBatchTokens, double MeanRequestsPerLayerPass, double MeanCallsPerExpertPass, string[] ErrorKinds, string Machine);

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
                table.AddRow("working set", $"{report.WorkingSetStartBytes / 1048576.0:F0} → {report.WorkingSetEndBytes / 1048576.0:F0} MiB ({report.MemoryGrowthPct:+0.0;-0.0}%, target < 10%)");
                table.AddRow("working set after warm-up under load", $"{report.WorkingSetWarmBytes / 1048576.0:F0} → {report.WorkingSetEndBytes / 1048576.0:F0} MiB ({report.MemoryGrowthAfterWarmupPct:+0.0;-0.0}%)");
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
            GC.Collect();
            var memoryStart = Process.GetCurrentProcess().WorkingSet64;
            if (progress) AnsiConsole.MarkupLine($"[grey]single-client p50 {Ms(single, 50):F1} ms; {clients} clients for {seconds} s...[/]");

            long passes = 0, passCalls = 0;
            using var listener = new System.Diagnostics.Metrics.MeterListener();
            listener.InstrumentPublished = (i, l) => { if (i.Meter.Name == Diagnostics.MoeGrainsMetrics.MeterName && i.Name == "moegrains.expert.batch_calls") l.EnableMeasurementEvents(i); };
            listener.SetMeasurementEventCallback<long>((_, v, _, _) => { Interlocked.Increment(ref passes); Interlocked.Add(ref passCalls, v); });
            listener.Start();
            var loaded = new LongHistogram(TimeStamp.Minutes(10), 3);
            long requests = 0, errors = 0, shares = 0;
            var kinds = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
            var sw = Stopwatch.StartNew();
            var until = TimeSpan.FromSeconds(seconds);
            // The working set once the load has warmed up (allocator pools and batch sizes settle): growth after it is what a leak shows.
            var warmAt = TimeSpan.FromSeconds(Math.Max(1, seconds / 6.0));
            var memoryWarm = memoryStart;
            var warmSample = Task.Run(async () =>
            {
                await Task.Delay(warmAt, ct);
                memoryWarm = Process.GetCurrentProcess().WorkingSet64;
            }, ct);
            var workers = Enumerable.Range(0, clients).Select(_ => Task.Run(async () =>
            {
                var local = new LongHistogram(TimeStamp.Minutes(10), 3);
                while (sw.Elapsed < until && !ct.IsCancellationRequested)
                {
                    var t0 = Stopwatch.GetTimestamp();
                    try
                    {
                        var answer = await layer.Forward(request, ct);
                        local.RecordValue(Stopwatch.GetTimestamp() - t0);
                        Interlocked.Increment(ref requests);
                        // A pass shared by m requests counts 1/m for each: passes = sum of 1/m (in millionths).
                        Interlocked.Add(ref shares, 1_000_000 / answer.MergedRequests);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        Interlocked.Increment(ref errors);
                        kinds.AddOrUpdate(e.GetType().Name, 1, (_, v) => v + 1);
                    }
                }
                lock (loaded) loaded.Add(local);
            }, ct)).ToArray();
            await Task.WhenAll(workers);
            await warmSample;
            var elapsed = sw.Elapsed.TotalSeconds;
            GC.Collect();
            var memoryEnd = Process.GetCurrentProcess().WorkingSet64;
            var silosAfter = (await info.Silos()).Length;
            var p50Single = Ms(single, 50);
            return new LoadReport("load", clients, elapsed, silos, tokens, requests, errors, requests / elapsed, requests * tokens / elapsed,
                p50Single, Ms(loaded, 50), Ms(loaded, 90), Ms(loaded, 99), loaded.GetMaxValue() * 1000.0 / Stopwatch.Frequency,
                Ms(loaded, 99) / p50Single, silosBefore, silosAfter, memoryStart, memoryEnd, 100.0 * (memoryEnd - memoryStart) / memoryStart,
                memoryWarm, 100.0 * (memoryEnd - memoryWarm) / memoryWarm,
                maxBatchTokens, shares == 0 ? 1 : requests * 1_000_000.0 / shares, passes == 0 ? 1 : (double)passCalls / passes,
                [.. kinds.Select(k => $"{k.Key}: {k.Value}")], BenchCommands.Machine());
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    private static double Ms(HistogramBase h, double percentile) => h.TotalCount == 0 ? 0 : h.GetValueAtPercentile(percentile) * 1000.0 / Stopwatch.Frequency;
}
