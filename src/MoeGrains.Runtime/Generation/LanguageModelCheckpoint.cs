using MoeGrains.Checkpoints;
using static TorchSharp.torch;

namespace MoeGrains.Generation;

/// <summary>
/// A language model's checkpoint folder, laid out as Hugging Face's: <c>model.safetensors</c> (weights under the
/// model's own names, sizes and tokenizer in the metadata, a SHA-256 per tensor), <c>config.json</c>, and, while it is
/// being trained, <c>training_state.safetensors</c> (optimizer moments, step and data position) for resuming.
/// </summary>
public static class LanguageModelCheckpoint
{
    public const string WeightsFile = "model.safetensors";
    public const string ConfigFile = "config.json";
    public const string TrainingStateFile = "training_state.safetensors";

    /// <summary>The weights file of a checkpoint given as its folder or as the <c>.safetensors</c> file itself.</summary>
    public static string WeightsPath(string folderOrFile) =>
        folderOrFile.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? folderOrFile : Path.Combine(folderOrFile, WeightsFile);

    public static string Folder(string folderOrFile) =>
        folderOrFile.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? Path.GetDirectoryName(Path.GetFullPath(folderOrFile))! : folderOrFile;

    public static bool Exists(string folderOrFile) => File.Exists(WeightsPath(folderOrFile));

    /// <summary>Writes the weights and <c>config.json</c> (each through a temporary file, so a crash leaves the old ones).</summary>
    public static void Save(string folder, IEnumerable<KeyValuePair<string, Tensor>> weights, string configJson, IReadOnlyDictionary<string, string> metadata)
    {
        Directory.CreateDirectory(folder);
        var meta = new Dictionary<string, string>(metadata) { ["format"] = "pt" };
        SafeTensorsFile.Write(Path.Combine(folder, WeightsFile), weights, meta);
        var config = Path.Combine(folder, ConfigFile);
        File.WriteAllText(config + ".tmp", configJson);
        File.Move(config + ".tmp", config, overwrite: true);
    }

    /// <summary>Opens a checkpoint's weights (validated) and reads its <c>config.json</c> when there is one.</summary>
    public static (SafeTensorsFile Weights, string? ConfigJson) Open(string folderOrFile)
    {
        var weights = SafeTensorsFile.Open(WeightsPath(folderOrFile));
        var config = Path.Combine(Folder(folderOrFile), ConfigFile);
        return (weights, File.Exists(config) ? File.ReadAllText(config) : null);
    }

    /// <summary>Loads every tensor of the file on the CPU (the caller disposes them).</summary>
    public static Dictionary<string, Tensor> LoadAll(SafeTensorsFile file) => file.LoadPrefix("");
}
