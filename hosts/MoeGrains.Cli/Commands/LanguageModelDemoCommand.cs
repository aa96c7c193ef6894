using System.CommandLine;
using MoeGrains.Generation;

namespace MoeGrains.Cli.Commands;

/// <summary>
/// <c>moe demo</c>, the main job in one command: trains the small reference language model on tinyshakespeare when no
/// checkpoint exists (<c>moe train</c> with a short time budget, progress shown), then starts a local cluster and streams
/// generated text through it (<c>moe generate --silos N</c>: the session grain publishes each token on an Orleans stream).
/// The layer-level demo that needs no training is <c>moe demo-layers</c>.
/// </summary>
internal static class LanguageModelDemoCommand
{
    public const double DEFAULT_MINUTES = 3;

    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "Checkpoint folder: used when it exists, trained into otherwise", DefaultValueFactory = _ => CliPaths.ReferenceModel };
        var minutes = new Option<double>("--minutes") { Description = "Training budget when there is no checkpoint yet", DefaultValueFactory = _ => DEFAULT_MINUTES };
        var silos = new Option<int>("--silos") { Description = "Silos in the local cluster", DefaultValueFactory = _ => 2 };
        var prompt = new Option<string>("--prompt") { Description = "Text to continue", DefaultValueFactory = _ => "ROMEO:" };
        var maxTokens = new Option<int>("--max-tokens") { DefaultValueFactory = _ => 200 };
        var temperature = new Option<double>("--temperature") { DefaultValueFactory = _ => 0.8 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 1 };
        var command = new Command("demo", $"Train the small MoE language model if there is no checkpoint ({DEFAULT_MINUTES:0} minutes on the CPU), start a local cluster and stream generated text through it")
        {
            checkpoint, minutes, silos, prompt, maxTokens, temperature, seed,
        };
        command.SetAction(async (parse, ct) =>
        {
            var folder = Path.GetFullPath(parse.GetValue(checkpoint)!);
            var budget = parse.GetValue(minutes);
            var silosCount = parse.GetValue(silos);
            if (silosCount < 1 || !(budget > 0))
            {
                Console.Error.WriteLine("--silos and --minutes must be positive.");
                return 2;
            }
            var invariant = System.Globalization.CultureInfo.InvariantCulture;
            if (LanguageModelCheckpoint.Exists(folder))
            {
                Console.WriteLine($"[1/2] checkpoint found at {folder}: no training (delete it, or `moe train`, to train again)");
            }
            else
            {
                Console.WriteLine($"[1/2] no checkpoint at {folder}: training the small model on tinyshakespeare for {budget.ToString(invariant)} minutes on the CPU " +
                    "(`moe train` trains 10 minutes for a better model)");
                var trained = await TrainCommand.Create().Parse(["--out", folder, "--minutes", budget.ToString(invariant)]).InvokeAsync(cancellationToken: ct);
                if (trained != 0 || !LanguageModelCheckpoint.Exists(folder))
                {
                    Console.Error.WriteLine($"training did not produce a checkpoint (exit code {trained})");
                    return trained == 0 ? 1 : trained;
                }
            }
            Console.WriteLine($"[2/2] starting a local cluster of {silosCount} silos (experts spread over them, the backbone and KV cache in a session grain); " +
                "tokens stream back through an Orleans stream as they are generated:");
            Console.WriteLine();
            return await GenerateCommand.Create().Parse([parse.GetValue(prompt)!, "--checkpoint", folder, "--silos", $"{silosCount}",
                "--max-tokens", $"{parse.GetValue(maxTokens)}", "--temperature", parse.GetValue(temperature).ToString(invariant), "--seed", $"{parse.GetValue(seed)}"])
                .InvokeAsync(cancellationToken: ct);
        });
        return command;
    }
}
