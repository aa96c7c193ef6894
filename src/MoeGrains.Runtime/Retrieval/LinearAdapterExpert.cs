using System.Globalization;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
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

    /// <summary>The adapter file's tensor: the query map <c>[dim, dim]</c>, float32.</summary>
    public const string WEIGHT_NAME = "query_map";

    /// <summary>Metadata of an adapter file: what it is, its base expert, the plugin that serves it and its domain.</summary>
    public const string KIND_KEY = "moegrains.kind";
    public const string KIND = "retrieval-adapter";
    public const string BASE_KEY = "base";
    public const string PLUGIN_KEY = "plugin";
    public const string DOMAIN_KEY = "domain";

    /// <summary>The file an adapter named <paramref name="name"/> is saved as in <paramref name="folder"/>.</summary>
    public static string FileFor(string folder, string name) => Path.Combine(folder, name + ".safetensors");

    /// <summary>
    /// Saves the query map as safetensors (with its SHA-256), with metadata naming the base expert, the plugin that
    /// serves it (<c>{base}-adapter</c>) and the domain, plus <paramref name="extra"/> (how it was trained).
    /// </summary>
    public void Save(string path, string domain, IReadOnlyDictionary<string, string>? extra = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        var metadata = new Dictionary<string, string>(extra ?? new Dictionary<string, string>())
        {
            [KIND_KEY] = KIND,
            [BASE_KEY] = Base.Descriptor.Name,
            [PLUGIN_KEY] = Base.Descriptor.Name + "-adapter",
            [DOMAIN_KEY] = domain,
            ["name"] = Descriptor.Name,
            ["dim"] = Descriptor.OutputDim.ToString(CultureInfo.InvariantCulture),
        };
        SafeTensorsFile.Write(path, [new KeyValuePair<string, Tensor>(WEIGHT_NAME, _weight)], metadata); // folder, temporary, then move
    }

    /// <summary>
    /// Reads and validates an adapter file: a safetensors file (header, offsets, checksum) marked as a retrieval
    /// adapter, whose one tensor is a finite float32 <c>[dim, dim]</c> query map. Returns the map and the metadata.
    /// </summary>
    /// <exception cref="CheckpointException">The file is missing, malformed, not an adapter, or its map is unusable (the message names the file).</exception>
    public static (Tensor Weight, IReadOnlyDictionary<string, string> Metadata) ReadFile(string path, int? expectedDim = null)
    {
        var file = SafeTensorsFile.Open(path);
        if (!file.Metadata.TryGetValue(KIND_KEY, out var kind) || kind != KIND)
        {
            throw new CheckpointException($"'{path}' is not a retrieval adapter (metadata '{KIND_KEY}' is '{kind ?? "missing"}', expected '{KIND}').");
        }
        if (!file.Metadata.TryGetValue(BASE_KEY, out var baseName) || baseName.Length == 0)
        {
            throw new CheckpointException($"Adapter '{path}' does not name its base expert (metadata '{BASE_KEY}').");
        }
        if (!file.Tensors.TryGetValue(WEIGHT_NAME, out var entry))
        {
            throw new CheckpointException($"Adapter '{path}' has no tensor '{WEIGHT_NAME}'.");
        }
        if (entry.DType != "F32" || entry.Shape.Length != 2 || entry.Shape[0] != entry.Shape[1] || entry.Shape[0] < 1
            || (expectedDim is { } dim && entry.Shape[0] != dim))
        {
            throw new CheckpointException($"Adapter '{path}': '{WEIGHT_NAME}' is {entry.DType} [{string.Join(", ", entry.Shape)}], expected F32 [{expectedDim?.ToString(CultureInfo.InvariantCulture) ?? "d"}, {expectedDim?.ToString(CultureInfo.InvariantCulture) ?? "d"}].");
        }
        var weight = file.Load(WEIGHT_NAME);
        if (!weight.isfinite().all().item<bool>())
        {
            weight.Dispose();
            throw new CheckpointException($"Adapter '{path}': '{WEIGHT_NAME}' holds NaN or infinite values.");
        }
        return (weight, file.Metadata);
    }

    /// <summary>Loads a saved adapter onto <paramref name="baseExpert"/>, which must be the base it was trained on.</summary>
    /// <exception cref="CheckpointException">The file is unusable, or was trained on another base or dimension.</exception>
    public static LinearAdapterExpert Load(string path, IRetrieverExpert baseExpert, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(baseExpert);
        var (weight, metadata) = ReadFile(path, baseExpert.Descriptor.OutputDim);
        if (metadata[BASE_KEY] != baseExpert.Descriptor.Name)
        {
            weight.Dispose();
            throw new CheckpointException($"Adapter '{path}' was trained on '{metadata[BASE_KEY]}', not on '{baseExpert.Descriptor.Name}'.");
        }
        using (weight)
        {
            return new LinearAdapterExpert(name ?? (metadata.TryGetValue("name", out var n) ? n : Path.GetFileNameWithoutExtension(path)), baseExpert, weight);
        }
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
