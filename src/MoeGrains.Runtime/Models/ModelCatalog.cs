using Microsoft.Extensions.Options;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Hosting;

namespace MoeGrains.Models;

/// <summary>
/// The models a silo serves (configured name → checkpoint path). Checkpoints are opened and validated on first use and
/// reopened when the file changes, so a repaired file is picked up without a restart. Unknown names are refused.
/// </summary>
public sealed class ModelCatalog(IOptions<MoeGrainsOptions> options)
{
    private readonly Dictionary<string, (DateTime Stamp, long Length, SafeTensorsFile File, ModelSpec Spec)> _open = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();

    public IReadOnlyCollection<string> Names => options.Value.Models.Keys;

    public ModelSpec Get(string model) => Open(model).Spec;

    public SafeTensorsFile File(string model) => Open(model).File;

    private (SafeTensorsFile File, ModelSpec Spec) Open(string model)
    {
        if (!options.Value.Models.TryGetValue(model, out var configured))
        {
            throw new UnknownExpertException($"Unknown model '{model}' (served: {string.Join(", ", options.Value.Models.Keys.Order())}).");
        }
        var path = CheckpointFile(configured);
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            throw new CheckpointException($"Checkpoint '{path}' of model '{model}' does not exist.");
        }
        lock (_lock)
        {
            if (_open.TryGetValue(model, out var cached) && cached.Stamp == info.LastWriteTimeUtc && cached.Length == info.Length)
            {
                return (cached.File, cached.Spec);
            }
            var file = SafeTensorsFile.Open(path);
            var spec = ModelSpec.FromCheckpoint(model, file);
            _open[model] = (info.LastWriteTimeUtc, info.Length, file, spec);
            return (file, spec);
        }
    }

    /// <summary>The safetensors file of a configured checkpoint: the path itself, or a folder's <c>model.safetensors</c> (Hugging Face's layout).</summary>
    public static string CheckpointFile(string configured) =>
        Directory.Exists(configured) ? Generation.LanguageModelCheckpoint.WeightsPath(configured) : configured;

    /// <summary>Checks that <paramref name="layer"/> and <paramref name="expert"/> exist in <paramref name="model"/>.</summary>
    public ModelSpec Check(string model, int layer, int expert = 0)
    {
        var spec = Get(model);
        if ((uint)layer >= (uint)spec.Layers)
        {
            throw new UnknownExpertException($"Model '{model}' has {spec.Layers} layers; layer {layer} does not exist.");
        }
        if ((uint)expert >= (uint)spec.Experts)
        {
            throw new UnknownExpertException($"Model '{model}' has {spec.Experts} experts per layer; expert {expert} does not exist.");
        }
        return spec;
    }
}
