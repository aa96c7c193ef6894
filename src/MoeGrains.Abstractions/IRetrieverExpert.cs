using TorchSharp;

namespace MoeGrains;

/// <summary>
/// A retrieval expert: encodes queries and documents into one vector space, and indexes a corpus for top-k search.
/// An embedding expert only implements <see cref="Encode"/>; the default <see cref="Index"/> searches its document
/// embeddings exactly (<see cref="ExactIndex"/>). A lexical expert (BM25) has no embedding space: its descriptor's
/// <see cref="ExpertDescriptor.OutputDim"/> is 0, <see cref="Encode"/> throws, and it overrides <see cref="Index"/>.
/// </summary>
public interface IRetrieverExpert : IDisposable
{
    ExpertDescriptor Descriptor { get; }

    /// <summary>Encodes texts into <c>[count, dim]</c> embeddings; queries and documents may be encoded differently.</summary>
    torch.Tensor Encode(IReadOnlyList<string> texts, EncodeRole role);

    /// <summary>Builds a searchable index over <paramref name="documents"/> (their positions are the hit ids).</summary>
    IRetrieverIndex Index(IReadOnlyList<string> documents)
    {
        ArgumentNullException.ThrowIfNull(documents);
        return new ExactIndex(this, Encode(documents, EncodeRole.Document));
    }
}

/// <summary>Whether a text is a query or a document (asymmetric encoders treat them differently).</summary>
public enum EncodeRole
{
    Query,
    Document,
}

/// <summary>A searchable corpus: top-k documents, by position, for each query.</summary>
public interface IRetrieverIndex : IDisposable
{
    /// <summary>How many documents the index holds.</summary>
    int Count { get; }

    /// <summary>The best <paramref name="k"/> documents for each query, best first (fewer when the index is smaller).</summary>
    SearchHits[] Search(IReadOnlyList<string> queries, int k);
}

/// <summary>The documents found for one query, best first: positions in the indexed corpus and their scores.</summary>
public sealed record SearchHits(int[] Documents, float[] Scores)
{
    public int Count => Documents.Length;
}
