using System.CommandLine;
using System.Diagnostics;
using MoeGrains.Contracts;
using MoeGrains.Dispatch;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Plugins;
using Spectre.Console;
using static TorchSharp.torch;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe demo-layers</c> (the first demo; <c>moe demo</c> is now the language model's): a local 2-silo cluster serving the built-in SwiGLU model, running its MoE layers over token
/// embeddings of real text, showing which silo ran each expert, the timings, and the distance to in-process results.
/// </summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var silos = new Option<int>("--silos") { Description = "Silos in the local cluster", DefaultValueFactory = _ => 2 };
        var tokens = new Option<int>("--tokens") { Description = "Characters of text to run", DefaultValueFactory = _ => 512 };
        var text = new Option<string?>("--text") { Description = "Text file (default: tinyshakespeare from the shared data)" };
        var command = new Command("demo-layers", "Start a local cluster with the built-in plugin and run MoE layers over real text") { silos, tokens, text };
        command.SetAction(async (parse, ct) => await Run(parse.GetValue(silos), parse.GetValue(tokens), parse.GetValue(text), ct));
        return command;
    }

    private static async Task<int> Run(int silos, int tokens, string? textPath, CancellationToken ct)
    {
        if (silos < 1 || tokens < 1)
        {
            AnsiConsole.MarkupLine("[red]--silos and --tokens must be positive[/]");
            return 2;
        }
        var path = Path.Combine(CliPaths.Checkpoints, "demo.safetensors");
        var spec = new ModelSpec("demo", 2, 8, 256, 512, 2, "swiglu", "topk");
        if (!File.Exists(path))
        {
            AnsiConsole.MarkupLine($"creating the demo checkpoint [green]{Markup.Escape(path)}[/] (2 layers × 8 SwiGLU experts, d_model 256, d_ff 512, top-2)...");
            CheckpointCommand.Create(spec, path, 1234);
        }

        textPath ??= CliPaths.Data is { } data ? Path.Combine(data, "text", "tinyshakespeare.txt") : null;
        string text;
        if (textPath is not null && File.Exists(textPath))
        {
            using var reader = new StreamReader(textPath);
            var buffer = new char[tokens];
            text = new string(buffer, 0, reader.ReadBlock(buffer, 0, tokens));
            AnsiConsole.MarkupLine($"input: the first {text.Length} characters of [green]{Markup.Escape(textPath)}[/], embedded with a seeded character table");
        }
        else
        {
            text = new string(Enumerable.Range(0, tokens).Select(i => (char)('a' + i % 26)).ToArray());
            AnsiConsole.MarkupLine("[yellow]shared data not found (set MOEGRAINS_DATA): using a synthetic text[/]");
        }
        using var hidden = Embed(text, spec.DModel);

        AnsiConsole.MarkupLine($"starting {silos} silos in this process...");
        var sw = Stopwatch.StartNew();
        await using var cluster = await LocalCluster.StartAsync(silos, (_, silo) => silo.AddMoeGrains(o =>
        {
            o.Device = "cpu";
            o.PluginFolder = CliPaths.Plugins;
            o.Models["demo"] = path;
        }), cancellationToken: ct);
        AnsiConsole.MarkupLine($"cluster up in {sw.ElapsedMilliseconds} ms");

        using var local = new LocalMoeModel(PluginCatalog.Load(CliPaths.Plugins), path, CliServices.Provider, name: "demo");
        var x = hidden.clone();
        var reference = hidden.clone();
        for (var layer = 0; layer < spec.Layers; layer++)
        {
            sw.Restart();
            var result = await cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("demo", layer)).Forward(new MoeLayerRequest(WireTensor.FromTensor(x)), ct);
            var ms = sw.Elapsed.TotalMilliseconds;
            using var y = result.Output.ToTensor();
            using var expected = await local.ForwardLayerAsync(layer, reference, cancellationToken: ct);
            var error = (y - expected.Output).abs().max().item<float>() / Math.Max(expected.Output.abs().max().item<float>(), 1e-12f);

            var table = new Table().Title($"layer {layer}: {text.Length} tokens, {result.Messages} expert messages, {ms:F1} ms (first call: experts load their weights), {result.CrossSiloBytes / 1024.0:F0} KiB between silos")
                .AddColumns("expert", "silo", "tokens", "compute ms", "round trip ms");
            foreach (var call in result.Calls)
            {
                table.AddRow($"{call.Expert}", Markup.Escape(call.Silo), $"{call.Tokens}", $"{call.ComputeMs:F2}", $"{call.RoundTripMs:F2}");
            }
            AnsiConsole.Write(table);
            sw.Restart();
            await cluster.GrainFactory.GetGrain<IMoeLayerGrain>(ExpertKey.Layer("demo", layer)).Forward(new MoeLayerRequest(WireTensor.FromTensor(x)), ct);
            AnsiConsole.MarkupLine($"max relative difference to the in-process layer: [green]{error:E2}[/]; the same layer again, experts warm: [green]{sw.Elapsed.TotalMilliseconds:F1} ms[/]");

            var next = x + y; // residual connection, as in a transformer block
            x.Dispose();
            x = next;
            var nextRef = reference + expected.Output;
            reference.Dispose();
            reference = nextRef;
        }
        x.Dispose();
        reference.Dispose();
        return 0;
    }

    /// <summary>Seeded character embeddings plus sinusoidal positions: [tokens, d_model].</summary>
    internal static Tensor Embed(string text, int dModel)
    {
        using var scope = NewDisposeScope();
        var table = randn(new long[] { 256, dModel }, generator: new Generator(42));
        var ids = tensor(text.Select(c => (long)(c % 256)).ToArray());
        var positions = arange(text.Length, dtype: ScalarType.Float32).unsqueeze(1);
        var freq = exp(arange(0, dModel, 2, dtype: ScalarType.Float32).mul(-Math.Log(10000.0) / dModel));
        var pe = zeros(text.Length, dModel);
        pe[TensorIndex.Colon, TensorIndex.Slice(0, null, 2)] = sin(positions * freq);
        pe[TensorIndex.Colon, TensorIndex.Slice(1, null, 2)] = cos(positions * freq);
        return table.index_select(0, ids).add(pe).MoveToOuterDisposeScope();
    }
}
