using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>What a decentralized diffusion model is: data, partitioning, plugins, sizes and training budgets.</summary>
public sealed record DiffusionManifest
{
    public string Dataset { get; init; } = DigitData.OptDigits;
    public int MnistPool { get; init; } = 2;
    public int ImageSize { get; init; } = 8;
    public int Experts { get; init; } = 4;
    public string Partitioning { get; init; } = Diffusion.Partitioning.KMeans;
    public long Seed { get; init; } = 1;
    public string ExpertPlugin { get; init; } = "conv-denoiser";
    public string RouterPlugin { get; init; } = "partition-router";
    public int HiddenChannels { get; init; } = 32;
    public int RouterChannels { get; init; } = 16;
    public int Steps { get; init; } = 1500;
    public int Batch { get; init; } = 64;
    public double LearningRate { get; init; } = 2e-3;
    public int RouterSteps { get; init; } = 1500;

    /// <summary>
    /// How the experts' steps are set: <see cref="EqualSteps"/> (each expert <see cref="Steps"/>) or
    /// <see cref="StepsBySize"/> (the same total, K × <see cref="Steps"/>, shared in proportion to partition sizes, so
    /// that every training image is drawn about as often as in the monolith).
    /// </summary>
    public string StepAllocation { get; init; } = EqualSteps;

    public const string EqualSteps = "equal";
    public const string StepsBySize = "size";

    /// <summary>Training steps of expert <paramref name="k"/> given the partition sizes.</summary>
    public int ExpertSteps(int k, IReadOnlyList<int> sizes)
    {
        ArgumentNullException.ThrowIfNull(sizes);
        if (StepAllocation == EqualSteps) return Steps;
        var total = sizes.Sum();
        return Math.Max(1, (int)Math.Round((double)Experts * Steps * sizes[k] / Math.Max(1, total)));
    }

    /// <summary>The plugins' settings (sizes).</summary>
    [JsonIgnore]
    public IReadOnlyDictionary<string, string> Settings => new Dictionary<string, string>
    {
        ["image_size"] = ImageSize.ToString(CultureInfo.InvariantCulture),
        ["image_channels"] = "1",
        ["hidden_channels"] = HiddenChannels.ToString(CultureInfo.InvariantCulture),
        ["time_features"] = "16",
        ["num_experts"] = Experts.ToString(CultureInfo.InvariantCulture),
        ["router_channels"] = RouterChannels.ToString(CultureInfo.InvariantCulture),
        ["router_hidden"] = "64",
    };

    /// <summary>Seed of expert <paramref name="k"/> (weights and minibatches); the monolith is <c>k = -1</c>, the router <c>k = -2</c>.</summary>
    public long SeedOf(int k) => Seed * 1000 + k + 3;

    public void Validate()
    {
        if (Experts is < 1 or > 64) throw new ArgumentOutOfRangeException(nameof(Experts), $"experts must be 1..64, got {Experts}.");
        if (ImageSize is < 4 or > 64) throw new ArgumentOutOfRangeException(nameof(ImageSize), $"image size must be 4..64, got {ImageSize}.");
        if (Steps < 1 || RouterSteps < 1 || Batch < 1) throw new ArgumentOutOfRangeException(nameof(Steps), "steps, router steps and batch must be positive.");
        if (StepAllocation is not (EqualSteps or StepsBySize))
            throw new ArgumentException($"Unknown step allocation '{StepAllocation}' (known: {EqualSteps}, {StepsBySize}).", nameof(StepAllocation));
        if (Partitioning is not (Diffusion.Partitioning.KMeans or Diffusion.Partitioning.ByClass))
            throw new ArgumentException($"Unknown partitioning '{Partitioning}' (known: kmeans, class).", nameof(Partitioning));
    }
}

/// <summary>
/// The folder of a trained decentralized diffusion model: <c>manifest.json</c>, <c>partition.json</c> (the partition of
/// each training image), one safetensors checkpoint per expert (<c>expert-K.safetensors</c>, with its progress in
/// <c>expert-K.progress.json</c>), the router's and the monolith baseline's.
/// </summary>
public sealed class DiffusionModelFolder
{
    public const string RoleKey = "moegrains.diffusion.role";
    public const string TrainFlopsKey = "moegrains.diffusion.train_flops";
    public const string PluginKey = "moegrains.plugin";
    public const string Monolith = "monolith";
    public const string Router = "router";

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public DiffusionModelFolder(string path, DiffusionManifest manifest)
    {
        Path = System.IO.Path.GetFullPath(path);
        Manifest = manifest;
    }

    public string Path { get; }

    public DiffusionManifest Manifest { get; }

    public string ExpertFile(int k) => System.IO.Path.Combine(Path, $"expert-{k}.safetensors");
    public string ProgressFile(string role) => System.IO.Path.Combine(Path, $"{role}.progress.json");
    public string RouterFile => System.IO.Path.Combine(Path, "router.safetensors");
    public string MonolithFile => System.IO.Path.Combine(Path, "monolith.safetensors");
    public string PartitionFile => System.IO.Path.Combine(Path, "partition.json");

    /// <summary>Creates the folder and writes the manifest.</summary>
    public static DiffusionModelFolder Create(string path, DiffusionManifest manifest)
    {
        ArgumentNullException.ThrowIfNull(manifest);
        manifest.Validate();
        Directory.CreateDirectory(path);
        File.WriteAllText(System.IO.Path.Combine(path, "manifest.json"), JsonSerializer.Serialize(manifest, Json));
        return new DiffusionModelFolder(path, manifest);
    }

    /// <summary>Opens a model folder; a missing or bad manifest is a <see cref="CheckpointException"/>.</summary>
    public static DiffusionModelFolder Open(string path)
    {
        var file = System.IO.Path.Combine(path, "manifest.json");
        if (!File.Exists(file)) throw new CheckpointException($"'{path}' is not a diffusion model folder: it has no manifest.json.");
        DiffusionManifest manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<DiffusionManifest>(File.ReadAllText(file), Json) ?? throw new JsonException("empty");
            manifest.Validate();
        }
        catch (Exception e) when (e is JsonException or ArgumentException)
        {
            throw new CheckpointException($"{file} is not a valid diffusion manifest: {e.Message}");
        }
        return new DiffusionModelFolder(path, manifest);
    }

    public void WritePartition(IReadOnlyList<int> partition) => File.WriteAllText(PartitionFile, JsonSerializer.Serialize(partition));

    public int[] ReadPartition() => File.Exists(PartitionFile)
        ? JsonSerializer.Deserialize<int[]>(File.ReadAllText(PartitionFile)) ?? []
        : throw new CheckpointException($"{PartitionFile} is missing: the model was not partitioned.");

    /// <summary>Writes a trained plugin's weights with its role and training FLOPs in the metadata (to a temporary file, then renamed).</summary>
    public void Save(string file, IStateDict plugin, string pluginName, string role, long trainFlops)
    {
        ArgumentNullException.ThrowIfNull(plugin);
        var meta = new Dictionary<string, string>(Manifest.Settings)
        {
            [RoleKey] = role,
            [PluginKey] = pluginName,
            [TrainFlopsKey] = trainFlops.ToString(CultureInfo.InvariantCulture),
        };
        var tmp = file + ".tmp";
        SafeTensorsFile.Write(tmp, plugin.StateDict(), meta);
        File.Move(tmp, file, overwrite: true);
    }

    /// <summary>Training FLOPs recorded in a checkpoint.</summary>
    public static long TrainFlops(string file) =>
        SafeTensorsFile.Open(file).Metadata.TryGetValue(TrainFlopsKey, out var v) && long.TryParse(v, CultureInfo.InvariantCulture, out var f) ? f : 0;

    /// <summary>Expert <paramref name="k"/> from its checkpoint; an unknown index is an <see cref="UnknownExpertException"/>.</summary>
    public IDiffusionExpert CreateExpert(PluginCatalog plugins, int k, Device device, IServiceProvider services)
    {
        if (k < 0 || k >= Manifest.Experts)
        {
            throw new UnknownExpertException($"Diffusion model '{System.IO.Path.GetFileName(Path)}' has experts 0..{Manifest.Experts - 1}; there is no expert {k}.");
        }
        return CreateExpertFrom(plugins, ExpertFile(k), $"expert {k}", device, services);
    }

    public IDiffusionExpert CreateMonolith(PluginCatalog plugins, Device device, IServiceProvider services) =>
        CreateExpertFrom(plugins, MonolithFile, Monolith, device, services);

    public IDiffusionRouter CreateRouter(PluginCatalog plugins, Device device, IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        var weights = Load(RouterFile, Router, device);
        try
        {
            return plugins.Create<IDiffusionRouter>(Manifest.RouterPlugin, PluginKind.DiffusionRouter, Context(Router, -1, weights, device), services);
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
    }

    /// <summary>A fresh (untrained) plugin context for <paramref name="id"/>, from the manifest's sizes and the given seed.</summary>
    public PluginContext FreshContext(string id, int index, long seed) => new()
    {
        Id = $"{System.IO.Path.GetFileName(Path)}/{id}",
        Index = index,
        Device = CPU,
        Settings = Manifest.Settings,
        Seed = seed,
    };

    private IDiffusionExpert CreateExpertFrom(PluginCatalog plugins, string file, string what, Device device, IServiceProvider services)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        var weights = Load(file, what, device);
        try
        {
            return plugins.Create<IDiffusionExpert>(Manifest.ExpertPlugin, PluginKind.DiffusionExpert, Context(what, -1, weights, device), services);
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
    }

    private PluginContext Context(string id, int index, IReadOnlyDictionary<string, Tensor> weights, Device device) => new()
    {
        Id = $"{System.IO.Path.GetFileName(Path)}/{id}",
        Index = index,
        Device = device,
        Settings = Manifest.Settings,
        Weights = weights,
    };

    private static Dictionary<string, Tensor> Load(string file, string what, Device device)
    {
        if (!File.Exists(file)) throw new CheckpointException($"The {what} checkpoint {file} does not exist (not trained yet?).");
        return SafeTensorsFile.Open(file).LoadPrefix("", device);
    }
}

/// <summary>The progress of one isolated training run, written to its own file as it goes.</summary>
public sealed record DiffusionProgress(string Role, int Step, int Steps, double Loss, bool Done, long Flops, int Images)
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public void Write(string file)
    {
        var tmp = file + ".tmp";
        File.WriteAllText(tmp, JsonSerializer.Serialize(this, Json));
        File.Move(tmp, file, overwrite: true);
    }

    public static DiffusionProgress? Read(string file)
    {
        try
        {
            return File.Exists(file) ? JsonSerializer.Deserialize<DiffusionProgress>(File.ReadAllText(file), Json) : null;
        }
        catch (Exception e) when (e is IOException or JsonException)
        {
            return null;
        }
    }
}
