using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains.Retrieval;

/// <summary>Settings of <see cref="LinearAdapterExpert.Train"/>.</summary>
public sealed class AdapterTrainingOptions
{
    /// <summary>InfoNCE temperature (RouterRetriever's 0.05).</summary>
    public double Temperature { get; set; } = 0.05;

    public double LearningRate { get; set; } = 1e-3;

    public int Epochs { get; set; } = 4;

    /// <summary>Pairs per step; the other documents of the batch are the negatives.</summary>
    public int BatchSize { get; set; } = 128;

    public int Seed { get; set; } = 42;
}

/// <summary>
/// A domain expert in RouterRetriever's manner, scaled down: the document encoder is the frozen base expert, and the
/// query side gets a trained linear map (initialised to the identity) instead of a LoRA. It is trained on one domain's
/// documents alone, with pseudo-queries (titles, or first sentences) against their documents, by in-batch InfoNCE, so it
/// never sees a test query.
/// </summary>
public sealed class LinearAdapterExpert : IRetrieverExpert
{
    private readonly Tensor _weight;

    /// <summary>Takes ownership of <paramref name="weight"/> <c>[dim, dim]</c>; <paramref name="baseExpert"/> stays the caller's.</summary>
    public LinearAdapterExpert(string name, IRetrieverExpert baseExpert, Tensor weight)
    {
        ArgumentNullException.ThrowIfNull(baseExpert);
        ArgumentNullException.ThrowIfNull(weight);
        var dim = baseExpert.Descriptor.OutputDim;
        if (dim <= 0 || !weight.shape.SequenceEqual([(long)dim, dim]))
        {
            throw new ArgumentException($"An adapter on '{baseExpert.Descriptor.Name}' needs a [{dim}, {dim}] weight, got [{string.Join(", ", weight.shape)}].", nameof(weight));
        }
        Base = baseExpert;
        _weight = weight.detach().to_type(ScalarType.Float32).DetachFromDisposeScope();
        Descriptor = new ExpertDescriptor(name, ExpertKind.Retriever, 0, dim, (long)dim * dim * 4, "float32")
        {
            Description = $"linear query adapter on {baseExpert.Descriptor.Name}",
        };
    }

    public ExpertDescriptor Descriptor { get; }

    /// <summary>The frozen encoder: documents are its embeddings, queries its embeddings mapped by the adapter.</summary>
    public IRetrieverExpert Base { get; }

    public Tensor Encode(IReadOnlyList<string> texts, EncodeRole role)
    {
        using var scope = NewDisposeScope();
        var embeddings = Base.Encode(texts, role);
        return (role == EncodeRole.Query ? AdaptQueries(embeddings) : embeddings).MoveToOuterDisposeScope();
    }

    /// <summary>Maps base query embeddings <c>[n, dim]</c> into the domain's query space (unit length, like the base).</summary>
    public Tensor AdaptQueries(Tensor baseEmbeddings)
    {
        using var scope = NewDisposeScope();
        return nn.functional.normalize(baseEmbeddings.to_type(ScalarType.Float32).matmul(_weight), dim: 1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Trains the query map on pairs (pseudo-query i, document i), both given as base embeddings <c>[n, dim]</c>:
    /// loss = cross-entropy of <c>normalize(q W) · dᵀ / τ</c> against the diagonal. Returns the weight and the last epoch's mean loss.
    /// </summary>
    public static (Tensor Weight, double Loss) Train(Tensor queries, Tensor documents, AdapterTrainingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(queries);
        ArgumentNullException.ThrowIfNull(documents);
        options ??= new AdapterTrainingOptions();
        if (queries.dim() != 2 || !queries.shape.SequenceEqual(documents.shape) || queries.shape[0] < 2)
        {
            throw new ArgumentException($"Training needs at least 2 pairs of equal shape, got [{string.Join(", ", queries.shape)}] and [{string.Join(", ", documents.shape)}].");
        }
        var n = queries.shape[0];
        var dim = queries.shape[1];
        var weight = nn.Parameter(eye(dim));
        using var optimizer = optim.Adam([weight], options.LearningRate);
        var generator = new Generator((ulong)options.Seed);
        var q = queries.to_type(ScalarType.Float32).detach();
        var d = documents.to_type(ScalarType.Float32).detach();
        var lastLoss = 0.0;
        for (var epoch = 0; epoch < options.Epochs; epoch++)
        {
            using var order = randperm(n, generator: generator);
            double total = 0;
            var batches = 0;
            for (long start = 0; start + 1 < n; start += options.BatchSize)
            {
                using var scope = NewDisposeScope();
                var idx = order[TensorIndex.Slice(start, Math.Min(start + options.BatchSize, n))];
                var mapped = nn.functional.normalize(q.index_select(0, idx).matmul(weight), dim: 1);
                var logits = mapped.matmul(d.index_select(0, idx).t()).div(options.Temperature);
                var loss = nn.functional.cross_entropy(logits, arange(idx.shape[0]));
                optimizer.zero_grad();
                loss.backward();
                optimizer.step();
                total += loss.item<float>();
                batches++;
            }
            lastLoss = total / Math.Max(batches, 1);
        }
        return (weight.detach().clone().DetachFromDisposeScope(), lastLoss);
    }

    /// <summary>A document's pseudo-query: its title, else its first sentence; at most 32 words.</summary>
    public static string PseudoQuery(RetrievalDocument document)
    {
        ArgumentNullException.ThrowIfNull(document);
        var text = document.Title.Length > 0 ? document.Title : FirstSentence(document.Text);
        var words = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        return string.Join(' ', words.Take(32));
    }

    private static string FirstSentence(string text)
    {
        var end = text.IndexOf(". ", StringComparison.Ordinal);
        var endLine = text.IndexOf(" .", StringComparison.Ordinal);
        var cut = new[] { end, endLine }.Where(i => i > 0).DefaultIfEmpty(text.Length).Min();
        return text[..cut];
    }

    public void Dispose() => _weight.Dispose();
}
