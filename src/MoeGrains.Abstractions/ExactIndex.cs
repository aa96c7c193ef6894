using TorchSharp;
using static TorchSharp.torch;

namespace MoeGrains;

/// <summary>
/// Exact inner-product search over document embeddings <c>[count, dim]</c>: one matrix product per batch of queries,
/// then top-k, on the device where the embeddings live.
/// </summary>
public sealed class ExactIndex : IRetrieverIndex
{
    /// <summary>Queries scored per matrix product, which bounds the <c>[batch, count]</c> score matrix.</summary>
    public const int DEFAULT_QUERY_BATCH = 256;

    private readonly IRetrieverExpert _expert;
    private readonly Tensor _documents;

    /// <summary>Takes ownership of <paramref name="documentEmbeddings"/>.</summary>
    public ExactIndex(IRetrieverExpert expert, Tensor documentEmbeddings)
    {
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentNullException.ThrowIfNull(documentEmbeddings);
        if (documentEmbeddings.dim() != 2)
        {
            throw new ArgumentException($"Document embeddings must be [count, dim], got [{string.Join(", ", documentEmbeddings.shape)}].", nameof(documentEmbeddings));
        }
        _expert = expert;
        _documents = documentEmbeddings.to_type(ScalarType.Float32).DetachFromDisposeScope();
    }

    public int Count => (int)_documents.shape[0];

    public int Dim => (int)_documents.shape[1];

    public SearchHits[] Search(IReadOnlyList<string> queries, int k)
    {
        ArgumentNullException.ThrowIfNull(queries);
        using var scope = NewDisposeScope();
        var embeddings = _expert.Encode(queries, EncodeRole.Query);
        return SearchEmbeddings(embeddings, k);
    }

    /// <summary>Searches with query embeddings <c>[queries, dim]</c> already computed.</summary>
    public SearchHits[] SearchEmbeddings(Tensor queryEmbeddings, int k)
    {
        ArgumentNullException.ThrowIfNull(queryEmbeddings);
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (queryEmbeddings.dim() != 2 || queryEmbeddings.shape[1] != _documents.shape[1])
        {
            throw new ArgumentException($"Query embeddings must be [count, {Dim}], got [{string.Join(", ", queryEmbeddings.shape)}].", nameof(queryEmbeddings));
        }
        var top = Math.Min(k, Count);
        var results = new SearchHits[queryEmbeddings.shape[0]];
        if (top == 0)
        {
            Array.Fill(results, new SearchHits([], []));
            return results;
        }
        using var scope = NewDisposeScope();
        var q = queryEmbeddings.to(ScalarType.Float32, _documents.device);
        for (long start = 0; start < results.Length; start += DEFAULT_QUERY_BATCH)
        {
            var batch = q[TensorIndex.Slice(start, Math.Min(start + DEFAULT_QUERY_BATCH, results.Length))];
            var (values, indices) = batch.matmul(_documents.t()).topk(top, dim: 1);
            var scores = values.cpu().data<float>().ToArray();
            var ids = indices.to_type(ScalarType.Int32).cpu().data<int>().ToArray();
            for (var i = 0; i < batch.shape[0]; i++)
            {
                results[start + i] = new SearchHits(ids.AsSpan(i * top, top).ToArray(), scores.AsSpan(i * top, top).ToArray());
            }
        }
        return results;
    }

    public void Dispose() => _documents.Dispose();
}
