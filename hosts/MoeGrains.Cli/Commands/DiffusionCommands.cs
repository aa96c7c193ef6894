using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoeGrains.Contracts;
using MoeGrains.Diffusion;
using MoeGrains.Hosting;
using MoeGrains.Plugins;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe diffusion train|sample|eval</c>: decentralized diffusion on the shared digit data. Training starts one process
/// per expert (plus the router and the monolith baseline), each with its own checkpoint and progress file.
/// </summary>
internal static class DiffusionCommands
{
    public static Command Create() => new("diffusion", "Decentralized diffusion: flow-matching experts trained in isolation on data partitions, ensembled by a router")
    {
        Train(), Job(), Sample(), Eval(),
    };

    private static Option<string> ModelOption() => new("--model")
    {
        Description = "The model folder (written by train)",
        DefaultValueFactory = _ => Path.Combine(CliPaths.Checkpoints, "diffusion-optdigits"),
    };

    private static string Digits() => CliPaths.Data is { } d && Directory.Exists(Path.Combine(d, "digits"))
        ? Path.Combine(d, "digits")
        : throw new DirectoryNotFoundException("No digits data: set MOEGRAINS_DATA to the shared data folder (it holds digits/).");

    private static Command Train()
    {
        var dataset = new Option<string>("--dataset") { Description = "optdigits (8x8) or mnist (test split, pooled to 14x14)", DefaultValueFactory = _ => DigitData.OptDigits };
        var experts = new Option<int>("--experts") { Description = "Experts (partitions), K", DefaultValueFactory = _ => 4 };
        var partition = new Option<string>("--partition") { Description = "kmeans (on pixels) or class (digit mod K)", DefaultValueFactory = _ => Partitioning.KMeans };
        var steps = new Option<int>("--steps") { Description = "Training steps of each expert", DefaultValueFactory = _ => 1500 };
        var routerSteps = new Option<int>("--router-steps") { Description = "Training steps of the router", DefaultValueFactory = _ => 1500 };
        var batch = new Option<int>("--batch") { Description = "Images per step", DefaultValueFactory = _ => 64 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (cosine decay to a tenth)", DefaultValueFactory = _ => 2e-3 };
        var hidden = new Option<int>("--hidden") { Description = "Hidden channels of each expert (and of the monolith)", DefaultValueFactory = _ => 32 };
        var seed = new Option<int>("--seed") { Description = "Seed of the partitioning and of every run", DefaultValueFactory = _ => 1 };
        var output = new Option<string?>("--out") { Description = "Model folder (default checkpoints/diffusion-DATASET)" };
        var noMonolith = new Option<bool>("--no-monolith") { Description = "Skip the monolith baseline" };
        var allocation = new Option<string>("--allocation")
        {
            Description = "Expert steps: equal (each --steps) or size (K x --steps shared in proportion to partition sizes)",
            DefaultValueFactory = _ => DiffusionManifest.EqualSteps,
        };
        var seeds = new Option<int>("--seeds")
        {
            Description = "Independent repeats with seeds --seed, --seed+1, ...; with more than one, each goes to OUT/seed-N (one after the other)",
            DefaultValueFactory = _ => 1,
        };
        var command = new Command("train", "Partition the training images, then train each expert in its own process (concurrently, no communication), the router and the FLOP-matched monolith")
        {
            dataset, experts, partition, steps, routerSteps, batch, lr, hidden, seed, output, noMonolith, allocation, seeds,
        };
        command.SetAction(async (parse, ct) =>
        {
            var manifest = new DiffusionManifest
            {
                Dataset = parse.GetValue(dataset)!,
                ImageSize = parse.GetValue(dataset) == DigitData.Mnist ? 14 : 8,
                Experts = parse.GetValue(experts),
                Partitioning = parse.GetValue(partition)!,
                Steps = parse.GetValue(steps),
                RouterSteps = parse.GetValue(routerSteps),
                Batch = parse.GetValue(batch),
                LearningRate = parse.GetValue(lr),
                HiddenChannels = parse.GetValue(hidden),
                Seed = parse.GetValue(seed),
                StepAllocation = parse.GetValue(allocation)!,
            };
            var root = parse.GetValue(output) ?? Path.Combine(CliPaths.Checkpoints, $"diffusion-{manifest.Dataset}");
            var repeats = parse.GetValue(seeds);
            if (repeats is < 1 or > 20)
            {
                Console.Error.WriteLine($"--seeds must be 1..20, got {repeats}.");
                return 2;
            }
            for (var i = 0; i < repeats; i++)
            {
                var m = manifest with { Seed = manifest.Seed + i };
                var path = repeats == 1 ? root : DiffusionSeeds.SeedFolder(root, m.Seed);
                if (repeats > 1) AnsiConsole.MarkupLine($"[bold]seed {m.Seed}[/] -> {Markup.Escape(path)}");
                var rc = await TrainFolderAsync(m, path, parse.GetValue(noMonolith), ct);
                if (rc != 0) return rc;
            }
            return 0;
        });
        return command;
    }

    /// <summary>Partitions, then trains every expert, the router and the monolith of one model folder, each in its own process.</summary>
    private static async Task<int> TrainFolderAsync(DiffusionManifest manifest, string path, bool noMonolith, CancellationToken ct)
    {
        DiffusionModelFolder folder;
        string digits;
        try
        {
            digits = Digits();
            folder = DiffusionModelFolder.Create(path, manifest);
        }
        catch (Exception e) when (e is ArgumentException or DirectoryNotFoundException or IOException)
        {
            Console.Error.WriteLine(e.Message);
            return 2;
        }
        var sizes = DiffusionJobs.Partition(folder, digits);
        var expertSteps = Enumerable.Range(0, manifest.Experts).Select(k => manifest.ExpertSteps(k, sizes)).ToArray();
        AnsiConsole.MarkupLine($"[grey]{manifest.Dataset}: {sizes.Sum()} training images, {manifest.Partitioning} partitions of {string.Join(", ", sizes)}; expert steps {string.Join(", ", expertSteps)}[/]");

        // FLOPs are deterministic, so the monolith's matched budget is known before anything trains.
        var plugins = PluginCatalog.Load(CliPaths.Plugins);
        long expertFpi, routerFpi;
        using (var probe = plugins.Create<IDiffusionExpert>(manifest.ExpertPlugin, PluginKind.DiffusionExpert, folder.FreshContext("probe", 0, 0), CliServices.Provider))
        using (var router = plugins.Create<IDiffusionRouter>(manifest.RouterPlugin, PluginKind.DiffusionRouter, folder.FreshContext("probe", -1, 0), CliServices.Provider))
        {
            (expertFpi, routerFpi) = (probe.FlopsPerImage, router.FlopsPerImage);
        }
        var budget = 3L * manifest.Batch * (expertSteps.Sum(s => (long)s) * expertFpi + manifest.RouterSteps * routerFpi);
        var monolithSteps = DiffusionJobs.MatchedSteps(budget, manifest.Batch, expertFpi);
        AnsiConsole.MarkupLine($"[grey]expert {expertFpi / 1e6:F2} MFLOP/image, router {routerFpi / 1e6:F2}; experts + router train {budget / 1e12:F3} TFLOP; the monolith gets {monolithSteps} steps[/]");

        var jobs = Enumerable.Range(0, manifest.Experts).Select(k => $"expert-{k}").Append(DiffusionModelFolder.Router).ToList();
        if (!noMonolith) jobs.Add(DiffusionModelFolder.Monolith);
        var sw = Stopwatch.StartNew();
        var processes = jobs.Select(job =>
        {
            var args = new List<string> { "diffusion", "job", "--model", folder.Path, "--job", job };
            if (job == DiffusionModelFolder.Monolith) args.AddRange(["--steps", monolithSteps.ToString(CultureInfo.InvariantCulture)]);
            var start = ServeCommands.SelfStart(args);
            start.RedirectStandardOutput = true;
            start.RedirectStandardError = true;
            var p = Process.Start(start) ?? throw new InvalidOperationException($"could not start the {job} process");
            AnsiConsole.MarkupLine($"[grey]{job}: process {p.Id}[/]");
            return (Job: job, Process: p, Err: p.StandardError.ReadToEndAsync(ct), Out: p.StandardOutput.ReadToEndAsync(ct));
        }).ToList();
        // Ctrl+C ends every training process this command started.
        using var stop = ct.Register(() =>
        {
            foreach (var (_, p, _, _) in processes)
            {
                try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            }
        });
        var last = new Dictionary<string, (int, bool)>();
        while (processes.Any(p => !p.Process.HasExited))
        {
            await Task.Delay(2000, ct);
            foreach (var job in jobs)
            {
                if (DiffusionProgress.Read(folder.ProgressFile(job)) is { } pr && (!last.TryGetValue(job, out var s) || s != (pr.Step, pr.Done)))
                {
                    last[job] = (pr.Step, pr.Done);
                    if (pr.Step % 500 == 0 || pr.Done) AnsiConsole.MarkupLine($"[grey]{sw.Elapsed.TotalSeconds,6:F0} s  {job,-9} step {pr.Step,6}/{pr.Steps}  loss {pr.Loss:F4}{(pr.Done ? "  done" : "")}[/]");
                }
            }
        }
        var failed = 0;
        foreach (var (job, p, err, _) in processes)
        {
            await p.WaitForExitAsync(ct);
            if (p.ExitCode != 0)
            {
                failed++;
                Console.Error.WriteLine($"{job} failed (exit {p.ExitCode}): {await err}");
            }
        }
        AnsiConsole.MarkupLine($"{jobs.Count - failed} of {jobs.Count} runs done in {sw.Elapsed.TotalSeconds:F0} s; model folder {Markup.Escape(folder.Path)}");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>One isolated training run, in this process: what <c>train</c> starts once per expert, router and monolith.</summary>
    private static Command Job()
    {
        var model = ModelOption();
        var job = new Option<string>("--job") { Description = "expert-K, router or monolith", Required = true };
        var steps = new Option<int?>("--steps") { Description = "Steps (the monolith's matched budget)" };
        var threads = new Option<int>("--threads") { Description = "Torch threads of this process", DefaultValueFactory = _ => 1 };
        var command = new Command("job", "Train one expert, the router or the monolith of a partitioned model folder (started by train)") { model, job, steps, threads };
        command.Hidden = true;
        command.SetAction((parse, ct) =>
        {
            set_num_threads(Math.Max(1, parse.GetValue(threads)));
            var folder = DiffusionModelFolder.Open(parse.GetValue(model)!);
            var plugins = PluginCatalog.Load(CliPaths.Plugins);
            var name = parse.GetValue(job)!;
            var digits = Digits();
            DiffusionTrainingResult result;
            if (name == DiffusionModelFolder.Router)
            {
                result = DiffusionJobs.TrainRouter(folder, digits, plugins, CliServices.Provider);
            }
            else if (name == DiffusionModelFolder.Monolith)
            {
                result = DiffusionJobs.TrainMonolith(folder, digits, parse.GetValue(steps) ?? folder.Manifest.Steps * folder.Manifest.Experts, plugins, CliServices.Provider);
            }
            else if (name.StartsWith("expert-", StringComparison.Ordinal) && int.TryParse(name.AsSpan(7), CultureInfo.InvariantCulture, out var k))
            {
                result = DiffusionJobs.TrainExpert(folder, digits, k, plugins, CliServices.Provider);
            }
            else
            {
                Console.Error.WriteLine($"Unknown job '{name}' (expert-K, router, monolith).");
                return Task.FromResult(2);
            }
            Console.WriteLine($"{name}: {result.Steps} steps, loss {result.FinalLoss:F4}, {result.Flops / 1e12:F4} TFLOP");
            return Task.FromResult(0);
        });
        return command;
    }

    private static Command Sample()
    {
        var model = ModelOption();
        var n = new Option<int>("--n") { Description = $"Images (1..{DiffusionSampleRequest.MaxCount})", DefaultValueFactory = _ => 64 };
        var steps = new Option<int>("--steps") { Description = "Euler steps", DefaultValueFactory = _ => 20 };
        var topK = new Option<int>("--top-k") { Description = "Experts per image and step (0: the full mixture)", DefaultValueFactory = _ => 1 };
        var seed = new Option<long>("--seed") { Description = "Noise seed", DefaultValueFactory = _ => 1 };
        var silos = new Option<int>("--silos") { Description = "Silos of the local cluster the expert grains are spread over", DefaultValueFactory = _ => 2 };
        var output = new Option<string>("--out") { Description = "PNG grid to write", DefaultValueFactory = _ => "grid.png" };
        var monolith = new Option<bool>("--monolith") { Description = "Sample the monolith baseline in this process instead" };
        var scale = new Option<int>("--scale") { Description = "Pixels per image pixel in the PNG", DefaultValueFactory = _ => 4 };
        var command = new Command("sample", "Generate images with the ensemble (expert grains on several silos) and write a PNG grid") { model, n, steps, topK, seed, silos, output, monolith, scale };
        command.SetAction(async (parse, ct) =>
        {
            var folder = DiffusionModelFolder.Open(parse.GetValue(model)!);
            var request = new DiffusionSampleRequest(parse.GetValue(n), parse.GetValue(steps), parse.GetValue(topK), parse.GetValue(seed));
            try
            {
                request.Validate(folder.Manifest.Experts);
            }
            catch (DiffusionRequestException e)
            {
                Console.Error.WriteLine(e.Message);
                return 2;
            }
            Tensor images;
            var sw = Stopwatch.StartNew();
            if (parse.GetValue(monolith))
            {
                images = await DiffusionEvaluation.SampleLocalAsync(folder, PluginCatalog.Load(CliPaths.Plugins), CliServices.Provider, request.Count, request.Steps, 1, request.Seed, monolith: true);
                AnsiConsole.MarkupLine($"[grey]monolith: {request.Count} images in {sw.Elapsed.TotalSeconds:F1} s[/]");
            }
            else
            {
                await using var cluster = await LocalCluster.StartAsync(Math.Max(1, parse.GetValue(silos)), (_, silo) => silo
                    .AddMoeGrains(o => o.Device = "cpu").AddExpertPlugins(CliPaths.Plugins).AddDiffusion(o => o.Models["m"] = folder.Path), cancellationToken: ct);
                var (sampled, ensemble, backend) = await ClusterDiffusionSampler.SampleAsync(cluster.GrainFactory, "m", folder.Manifest.Experts, request);
                images = sampled;
                AnsiConsole.MarkupLine($"[grey]{request.Count} images, {request.Steps} steps, top-{(request.TopK == 0 ? folder.Manifest.Experts : request.TopK)} of {folder.Manifest.Experts} experts in {sw.Elapsed.TotalSeconds:F1} s; " +
                    $"{ensemble.ExpertImageCalls / (double)request.Count / request.Steps:F2} experts per image-step, {ensemble.Flops / (double)request.Count / 1e6:F1} MFLOP per image[/]");
                foreach (var s in backend.ExpertSilos) AnsiConsole.MarkupLine($"[grey]  {Markup.Escape(s)}[/]");
            }
            using (images)
            {
                File.WriteAllBytes(parse.GetValue(output)!, ImageGrid.Png(images, scale: parse.GetValue(scale)));
            }
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(parse.GetValue(output)!)}");
            return 0;
        });
        return command;
    }

    private static Command Eval()
    {
        var model = ModelOption();
        var samples = new Option<int>("--samples") { Description = "Images generated per system", DefaultValueFactory = _ => 500 };
        var steps = new Option<int>("--steps") { Description = "Euler steps", DefaultValueFactory = _ => 20 };
        var seed = new Option<long>("--seed") { Description = "Seed of the noise, the times and the classifier", DefaultValueFactory = _ => 11 };
        var seeds = new Option<int>("--seeds")
        {
            Description = "Evaluate the first N seed-* folders of --model (written by train --seeds) and report mean ± spread per system",
            DefaultValueFactory = _ => 1,
        };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var threads = new Option<int>("--threads") { Description = "Torch threads", DefaultValueFactory = _ => 1 };
        var command = new Command("eval", "Held-out flow-matching loss, Fréchet distance, class coverage and FLOPs of the monolith and the full, top-2 and top-1 ensembles")
        {
            model, samples, steps, seed, seeds, json, threads,
        };
        command.SetAction(async (parse, ct) =>
        {
            set_num_threads(Math.Max(1, parse.GetValue(threads)));
            var quiet = parse.GetValue(json);
            var log = CliLog.Progress(quiet);
            var root = parse.GetValue(model)!;
            var repeats = parse.GetValue(seeds);
            var seedFolders = DiffusionSeeds.SeedFolders(root);
            if (repeats < 1 || (repeats > 1 && seedFolders.Count < repeats))
            {
                Console.Error.WriteLine($"--seeds {repeats}: {root} holds {seedFolders.Count} seed-N model folders (train --seeds N writes them).");
                return 2;
            }
            var folders = repeats > 1 ? seedFolders.Take(repeats).ToList() : [root];
            var options = new DiffusionEvalOptions { Samples = parse.GetValue(samples), Steps = parse.GetValue(steps), Seed = parse.GetValue(seed) };
            var reports = new List<DiffusionEvalReport>();
            var (digits, plugins) = (Digits(), PluginCatalog.Load(CliPaths.Plugins)); // once for every seed folder
            foreach (var path in folders)
            {
                var folder = DiffusionModelFolder.Open(path);
                log($"evaluating {path}");
                reports.Add(await DiffusionEvaluation.RunAsync(folder, digits, plugins, CliServices.Provider, options, log));
            }
            var jsonOptions = new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };
            if (repeats > 1)
            {
                var summary = DiffusionSeeds.Aggregate(reports);
                if (quiet)
                {
                    Console.WriteLine(JsonSerializer.Serialize(summary, jsonOptions));
                    return 0;
                }
                var table = new Table().AddColumns("system", "held-out loss", "minus monolith", "Fréchet", "minus monolith", "class coverage", "train TFLOP", "sample MFLOP/image");
                foreach (var s in summary.Systems)
                {
                    table.AddRow(s.Name, s.HeldoutLoss.ToString(), s.LossMinusMonolith.ToString(), $"{s.Frechet.Mean:F2} ± {s.Frechet.Std:F2}",
                        $"{s.FrechetMinusMonolith.Mean:F2} ± {s.FrechetMinusMonolith.Std:F2}", $"{s.ClassCoverage.Mean:P0} ± {s.ClassCoverage.Std:P0}",
                        (s.TrainFlops / 1e12).ToString("F3", CultureInfo.InvariantCulture), (s.SampleFlopsPerImage / 1e6).ToString("F1", CultureInfo.InvariantCulture));
                }
                AnsiConsole.Write(table);
                AnsiConsole.MarkupLine($"[grey]{summary.Runs.Count} seeds; oracle-routed held-out loss {summary.OracleLoss}; router accuracy by t (0..1 in {DiffusionEvaluation.RouterTimeBins} bins): " +
                    $"{string.Join(", ", summary.RouterAccuracyByTime.Select(a => $"{a.Mean:P0} ± {a.Std:P0}"))}[/]");
                return 0;
            }
            var report = reports[0];
            if (quiet)
            {
                Console.WriteLine(JsonSerializer.Serialize(report, jsonOptions));
                return 0;
            }
            var systems = new Table().AddColumns("system", "held-out loss", "Fréchet", "class coverage", "train TFLOP", "sample MFLOP/image", "experts/step");
            foreach (var s in report.Systems)
            {
                systems.AddRow(s.Name, s.HeldoutLoss.ToString("F4", CultureInfo.InvariantCulture), s.Frechet.ToString("F2", CultureInfo.InvariantCulture),
                    s.ClassCoverage.ToString("P0", CultureInfo.InvariantCulture), (s.TrainFlops / 1e12).ToString("F3", CultureInfo.InvariantCulture),
                    (s.SampleFlopsPerImage / 1e6).ToString("F1", CultureInfo.InvariantCulture), s.ExpertsPerStep.ToString("F2", CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(systems);
            var partitions = new Table().AddColumns("partition", "held-out images", "its expert's loss", "monolith's loss");
            foreach (var p in report.PartitionLosses)
            {
                partitions.AddRow(p.Partition.ToString(CultureInfo.InvariantCulture), p.Images.ToString(CultureInfo.InvariantCulture),
                    p.ExpertLoss.ToString("F4", CultureInfo.InvariantCulture), p.MonolithLoss.ToString("F4", CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(partitions);
            AnsiConsole.MarkupLine($"[grey]classifier accuracy {report.ClassifierAccuracy:P1}; training images vs held-out Fréchet {report.ReferenceFrechet:F2}; oracle-routed held-out loss {report.OracleLoss:F4}[/]");
            return 0;
        });
        return command;
    }
}
