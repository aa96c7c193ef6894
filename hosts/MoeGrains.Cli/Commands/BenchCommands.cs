using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;
using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Plugins;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

internal static class BenchCommands
{
    public static Command Create() => new("bench", "Benchmarks that print a table and, with --json, one JSON object") { Dispatch(), LoadBenchCommand.Create(), OffloadBenchCommand.Create() };

    private static Command Dispatch()
    {
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var tokens = new Option<int[]>("--tokens") { Description = "Token counts", DefaultValueFactory = _ => [256, 2048], AllowMultipleArgumentsPerToken = true };
        var silos = new Option<int[]>("--silos") { Description = "Cluster sizes", DefaultValueFactory = _ => [1, 2, 3], AllowMultipleArgumentsPerToken = true };
        var repeats = new Option<int>("--repeats") { Description = "Timed rounds per case (medians reported)", DefaultValueFactory = _ => 15 };
        var dModel = new Option<int>("--d-model") { DefaultValueFactory = _ => 512 };
        var dFf = new Option<int>("--d-ff") { DefaultValueFactory = _ => 1024 };
        var experts = new Option<int>("--experts") { DefaultValueFactory = _ => 8 };
        var topK = new Option<int>("--top-k") { DefaultValueFactory = _ => 2 };
        var wire = new Option<string>("--wire") { Description = "Wire dtype of hidden states: fp32, fp16, bf16", DefaultValueFactory = _ => "fp32" };
        var command = new Command("dispatch", "One MoE layer in process and through grains on 1, 2 and 3 silos: time, bytes and messages")
        {
            json, tokens, silos, repeats, dModel, dFf, experts, topK, wire,
        };
        command.SetAction(async (parse, ct) =>
        {
            var spec = new ModelSpec("bench", 1, parse.GetValue(experts), parse.GetValue(dModel), parse.GetValue(dFf), parse.GetValue(topK), "swiglu", "topk");
            if (CheckpointCommand.Validate(spec) is { } error)
            {
                Console.Error.WriteLine(error);
                return 2;
            }
            var report = await RunDispatch(spec, parse.GetValue(tokens)!, parse.GetValue(silos)!, Math.Max(1, parse.GetValue(repeats)),
                TensorDTypes.Parse(parse.GetValue(wire)!), !parse.GetValue(json), ct);
            return Output(report, parse.GetValue(json), Print);
        });
        return command;
    }

    /// <summary>Writes <paramref name="report"/> as one JSON object on stdout (<c>--json</c>) or as tables; returns exit code 0.</summary>
    internal static int Output<T>(T report, bool json, Action<T> print)
    {
        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(report, JsonOptions));
        }
        else
        {
            print(report);
        }
        return 0;
    }

    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    internal sealed record DispatchCase(int Tokens, int Silos, string Dispatch, double MedianMs, double P10Ms, double P90Ms, double RatioToLocal,
        double BytesPerToken, int MessagesPerStep, int CrossSiloMessagesPerStep, double MaxRelativeError, double ExpertComputeMs);

    internal sealed record DispatchReport(string Benchmark, object Model, string Wire, int Repeats, string Machine, DispatchCase[] Cases);

    private static async Task<DispatchReport> RunDispatch(ModelSpec spec, int[] tokenCounts, int[] siloCounts, int repeats, TensorDType wire, bool progress, CancellationToken ct)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"moegrains-bench-{Environment.ProcessId}");
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, "bench.safetensors");
        try
        {
            Log(progress, $"writing a {spec.Experts}-expert checkpoint (d_model {spec.DModel}, d_ff {spec.DFf})...");
            CheckpointCommand.Create(spec, path, 99);
            var inputs = tokenCounts.ToDictionary(t => t, t => randn(new long[] { t, spec.DModel }, generator: new Generator((ulong)t)));
            var cases = new List<DispatchCase>();
            using var local = new LocalMoeModel(PluginCatalog.Load(CliPaths.Plugins), path, CliServices.Provider, name: "bench");
            var localOutputs = new Dictionary<int, Tensor>();
            foreach (var t in tokenCounts)
            {
                using var reference = await local.ForwardLayerAsync(0, inputs[t], cancellationToken: ct);
                localOutputs[t] = reference.Output.clone();
            }

            // Each cluster size is timed interleaved with the in-process layer (local, grain, local, grain, ...), so that
            // both see the same machine: the ratio is measured in one run, not across minutes of drifting load.
            foreach (var n in siloCounts)
            {
                Log(progress, $"starting {n} silo(s)...");
                await using var cluster = await LocalCluster.StartAsync(n, (_, silo) => silo.AddMoeGrains(o =>
                {
                    o.Device = "cpu";
                    o.PluginFolder = CliPaths.Plugins;
                    o.Models["bench"] = path;
                    o.ExpertTimeoutMs = 120_000;
                }), cancellationToken: ct);
                var layer = cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("bench", 0));
                foreach (var t in tokenCounts)
                {
                    Log(progress, $"{t} tokens: in process vs grains on {n} silo(s), {repeats} rounds...");
                    var request = new MoeLayerRequest(WireTensor.FromTensor(inputs[t], wire)) { ExpertTimeoutMs = 120_000 };
                    MoeLayerResult? last = null;
                    MoeLayerOutput? lastLocal = null;
                    var (localTimes, grainTimes) = await TimePaired(repeats,
                        async () => { lastLocal?.Dispose(); lastLocal = await local.ForwardLayerAsync(0, inputs[t], cancellationToken: ct); },
                        async () => last = await layer.Forward(request, ct));
                    using var output = last!.Output.ToTensor();
                    var error = (output - localOutputs[t]).abs().max().item<float>() / Math.Max(localOutputs[t].abs().max().item<float>(), 1e-12f);
                    var localMedian = Percentile(localTimes, 0.5);
                    var median = Percentile(grainTimes, 0.5);
                    if (!cases.Any(c => c.Dispatch == "local" && c.Tokens == t))
                    {
                        cases.Add(new DispatchCase(t, 0, "local", localMedian, Percentile(localTimes, 0.1), Percentile(localTimes, 0.9), 1.0, 0,
                            lastLocal!.Calls.Length, 0, 0, lastLocal.Calls.Sum(c => c.ComputeMs)));
                    }
                    lastLocal?.Dispose();
                    var crossMessages = last.Calls.Count(c => c.Silo != last.Silo);
                    // The ratio is the median of the per-round ratios: robust to the load drifting during the run.
                    var ratio = Percentile(grainTimes.Zip(localTimes, (g, l) => g / l).ToArray(), 0.5);
                    cases.Add(new DispatchCase(t, n, "grain", median, Percentile(grainTimes, 0.1), Percentile(grainTimes, 0.9), ratio,
                        (double)last.CrossSiloBytes / t, last.Messages, crossMessages, error, last.Calls.Sum(c => c.ComputeMs)));
                }
            }
            cases = [.. cases.OrderBy(c => c.Tokens).ThenBy(c => c.Silos)];
            foreach (var x in inputs.Values) x.Dispose();
            foreach (var x in localOutputs.Values) x.Dispose();
            return new DispatchReport("dispatch", new { d_model = spec.DModel, d_ff = spec.DFf, experts = spec.Experts, top_k = spec.TopK, layers = 1 },
                wire.ToString().ToLowerInvariant(), repeats, Machine(), [.. cases]);
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }

    internal static string Machine() =>
        $"{Environment.ProcessorCount} cores, {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1L << 30)} GiB, {System.Runtime.InteropServices.RuntimeInformation.OSDescription.Trim()}, libtorch CPU, {get_num_threads()} torch threads";

    private static void Print(DispatchReport report)
    {
        var table = new Table().Title($"MoE layer dispatch ({report.Wire} on the wire, median of {report.Repeats}; {Markup.Escape(report.Machine)})")
            .AddColumns("tokens", "dispatch", "silos", "median ms", "p10-p90 ms", "ratio to local", "bytes/token between silos", "messages/step", "cross-silo", "max rel. error");
        foreach (var c in report.Cases)
        {
            table.AddRow($"{c.Tokens}", c.Dispatch, c.Dispatch == "local" ? "-" : $"{c.Silos}", $"{c.MedianMs:F1}", $"{c.P10Ms:F1}-{c.P90Ms:F1}",
                $"{c.RatioToLocal:F2}", $"{c.BytesPerToken:F0}", $"{c.MessagesPerStep}", $"{c.CrossSiloMessagesPerStep}", $"{c.MaxRelativeError:E1}");
        }
        AnsiConsole.Write(table);
    }

    /// <summary>Times two actions alternately, after two warm-up rounds.</summary>
    internal static async Task<(double[] A, double[] B)> TimePaired(int repeats, Func<Task> a, Func<Task> b)
    {
        for (var i = 0; i < 2; i++) { await a(); await b(); }
        var ta = new double[repeats];
        var tb = new double[repeats];
        for (var i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            await a();
            ta[i] = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            await b();
            tb[i] = sw.Elapsed.TotalMilliseconds;
        }
        return (ta, tb);
    }

    internal static async Task<double[]> Time(int repeats, Func<Task> action)
    {
        await action(); // warm-up: activations, plugin load, first allocations
        await action();
        var times = new double[repeats];
        for (var i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            await action();
            times[i] = sw.Elapsed.TotalMilliseconds;
        }
        return times;
    }

    internal static double Percentile(double[] values, double q)
    {
        var sorted = values.Order().ToArray();
        var pos = q * (sorted.Length - 1);
        var lo = (int)Math.Floor(pos);
        var hi = (int)Math.Ceiling(pos);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
    }

    private static void Log(bool enabled, string message)
    {
        if (enabled) AnsiConsole.MarkupLine($"[grey]{Markup.Escape(message)}[/]");
        else Console.Error.WriteLine(message);
    }
}
