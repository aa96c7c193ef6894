using System.CommandLine;
using MoeGrains.Models;
using MoeGrains.Plugins;
using Spectre.Console;

namespace MoeGrains.Cli.Commands;

internal static class CheckpointCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Checkpoint file to write (.safetensors)", Required = true };
        var layers = new Option<int>("--layers") { Description = "MoE layers", DefaultValueFactory = _ => 2 };
        var experts = new Option<int>("--experts") { Description = "Experts per layer", DefaultValueFactory = _ => 8 };
        var dModel = new Option<int>("--d-model") { Description = "Hidden size", DefaultValueFactory = _ => 512 };
        var dFf = new Option<int>("--d-ff") { Description = "Expert inner size", DefaultValueFactory = _ => 1024 };
        var topK = new Option<int>("--top-k") { Description = "Experts per token", DefaultValueFactory = _ => 2 };
        var expert = new Option<string>("--expert") { Description = "Expert plugin", DefaultValueFactory = _ => "swiglu" };
        var router = new Option<string>("--router") { Description = "Router plugin", DefaultValueFactory = _ => "topk" };
        var seed = new Option<long>("--seed") { Description = "Initialisation seed", DefaultValueFactory = _ => 1234 };
        var create = new Command("create", "Write a freshly initialised checkpoint of the given sizes (Mixtral tensor names)")
        {
            output, layers, experts, dModel, dFf, topK, expert, router, seed,
        };
        create.SetAction(parse =>
        {
            var spec = new ModelSpec("model", parse.GetValue(layers), parse.GetValue(experts), parse.GetValue(dModel), parse.GetValue(dFf),
                parse.GetValue(topK), parse.GetValue(expert)!, parse.GetValue(router)!);
            var error = Validate(spec);
            if (error is not null)
            {
                AnsiConsole.MarkupLine($"[red]{Markup.Escape(error)}[/]");
                return 2;
            }
            var path = parse.GetValue(output)!;
            Create(spec, path, parse.GetValue(seed));
            AnsiConsole.MarkupLine($"wrote [green]{Markup.Escape(path)}[/] ({new FileInfo(path).Length / 1048576.0:F1} MiB): {spec.Layers} layers × {spec.Experts} {Markup.Escape(spec.ExpertPlugin)} experts, d_model {spec.DModel}, d_ff {spec.DFf}, top-{spec.TopK}");
            return 0;
        });
        return new Command("checkpoint", "Create and inspect checkpoints") { create };
    }

    public static string? Validate(ModelSpec spec) =>
        spec.Layers < 1 || spec.Experts < 1 || spec.DModel < 1 || spec.DFf < 1 ? "layers, experts, d-model and d-ff must be positive"
        : spec.TopK < 1 || spec.TopK > spec.Experts ? $"top-k must be between 1 and {spec.Experts}"
        : null;

    public static ModelSpec Create(ModelSpec spec, string path, long seed)
    {
        var catalog = PluginCatalog.Load(CliPaths.Plugins);
        return PluginFactory.CreateCheckpoint(catalog, spec, path, CliServices.Provider, seed);
    }
}
