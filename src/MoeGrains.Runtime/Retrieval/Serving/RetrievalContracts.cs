using MoeGrains.Contracts;

namespace MoeGrains.Retrieval.Serving;

/// <summary>
/// Hosts one retriever expert plugin on this silo (a stateless worker: one local activation per silo that encodes).
/// Key: the plugin's name (<c>minilm</c>, <c>bm25</c>, ...).
/// </summary>
[Alias("moegrains.IRetrieverGrain")]
public interface IRetrieverGrain : IGrainWithStringKey
{
    /// <summary>
    /// Encodes texts into <c>[count, dim]</c> float32 embeddings. With <paramref name="cacheScope"/> and a configured
    /// cache, the embeddings are read from (or stored in) the embedding cache under that scope.
    /// </summary>
    [Alias("encode")]
    [ResponseTimeout("00:30:00")] // the first call encodes a corpus
    Task<WireTensor> Encode(string[] texts, EncodeRole role, string? cacheScope = null);

    /// <summary>The expert's name and embedding size (0: a lexical expert, searched by text).</summary>
    [Alias("describe")]
    Task<RetrieverInfo> Describe();
}

/// <summary>
/// One slice of a collection's documents, indexed by one expert: the slice's document embeddings on this silo's device
/// and exact top-k over them (a lexical expert holds its whole index in one shard). Key: <see cref="RetrievalKeys.Shard"/>.
/// </summary>
[Alias("moegrains.IIndexShardGrain")]
public interface IIndexShardGrain : IGrainWithStringKey
{
    /// <summary>
    /// The best <paramref name="k"/> documents of this slice for each query: by query embeddings <c>[queries, dim]</c>
    /// (embedding experts) or by query texts (lexical experts). Positions are the documents' positions in the whole collection.
    /// </summary>
    [Alias("search")]
    [ResponseTimeout("00:30:00")] // the first call encodes a corpus
    Task<ShardHits> Search(string[] texts, WireTensor? embeddings, int k);
}

/// <summary>
/// A collection's search flow, as a stateless worker on the calling silo: route the query (pilot-embedding router) or
/// take the expert asked for, encode it with that expert's retriever grain, send it to the expert's index shards on
/// their silos, merge the shards' top-k. Key: the collection's name.
/// </summary>
[Alias("moegrains.IRetrievalGrain")]
public interface IRetrievalGrain : IGrainWithStringKey
{
    [Alias("search")]
    [ResponseTimeout("00:30:00")] // the first call encodes a corpus
    Task<RetrievalResult> Search(RetrievalRequest request);

    /// <summary>This collection's judged queries as router training queries (embedding, each expert's nDCG@10), for the routers of other collections.</summary>
    [Alias("pilot-queries")]
    [ResponseTimeout("00:30:00")] // the first call indexes the collection with every expert
    Task<PilotQuery[]> PilotQueries();
}

/// <summary>What a retriever grain hosts.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.RetrieverInfo")]
public sealed record RetrieverInfo([property: Id(0)] string Name, [property: Id(1)] int Dim, [property: Id(2)] string Silo);

/// <summary>Hits of one shard: per query, positions in the collection and scores, best first.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.ShardHits")]
public sealed record ShardHits([property: Id(0)] int[][] Documents, [property: Id(1)] float[][] Scores, [property: Id(2)] string Silo,
    [property: Id(3)] int First, [property: Id(4)] int Count);

/// <summary>
/// A search: the query text, how many documents, and optionally the expert to use instead of the router's choice, or
/// the router to use instead of the configured one (<see cref="QueryRouter.Names"/>).
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.RetrievalRequest")]
public sealed record RetrievalRequest([property: Id(0)] string Query, [property: Id(1)] int K, [property: Id(2)] string? Expert = null,
    [property: Id(3)] string? Router = null);

/// <summary>One document found.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.RetrievalHit")]
public sealed record RetrievalHit([property: Id(0)] int Position, [property: Id(1)] string Id, [property: Id(2)] float Score,
    [property: Id(3)] string Title, [property: Id(4)] string Text);

/// <summary>
/// The answer to a search: the expert that searched (the router's name when a mixing router fused every expert's
/// list) and whether the router chose it, the router's score per expert (mean or nearest pilot similarity; empty when
/// the expert was given), the hits, the silos whose shards answered, the router's name and its weight per expert.
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.RetrievalResult")]
public sealed record RetrievalResult(
    [property: Id(0)] string Collection,
    [property: Id(1)] string Expert,
    [property: Id(2)] bool Routed,
    [property: Id(3)] RetrievalHit[] Hits,
    [property: Id(4)] string[] Experts,
    [property: Id(5)] float[] RouterScores,
    [property: Id(6)] string[] ShardSilos,
    [property: Id(7)] string Router = "",
    [property: Id(8)] float[]? Weights = null);

/// <summary>A retrieval request that cannot be served as asked; <see cref="Field"/> names the offending input.</summary>
[GenerateSerializer, Alias("moegrains.RetrievalRequestException")]
public sealed class RetrievalRequestException : MoeGrainsException
{
    public RetrievalRequestException()
    {
    }

    public RetrievalRequestException(string field, string message) : base(message)
    {
        Field = field;
    }

    [Id(0)] public string Field { get; init; } = "";
}

/// <summary>Grain keys of the retrieval grains, built and parsed in one place.</summary>
public static class RetrievalKeys
{
    /// <summary>Collection names: letters, digits, '-', '_' and '.', at most 64 characters.</summary>
    public static bool IsValidName(string? name) =>
        name is { Length: > 0 and <= 64 } && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') && name is not "." and not "..";

    public static string Shard(string collection, string expert, int shard, int shards) => $"{collection}/{expert}/{shard}/{shards}";

    public static (string Collection, string Expert, int Shard, int Shards) ParseShard(string key)
    {
        var parts = key.Split('/');
        if (parts.Length != 4 || !int.TryParse(parts[2], out var shard) || !int.TryParse(parts[3], out var shards) || shards < 1 || shard < 0 || shard >= shards)
        {
            throw new UnknownExpertException($"'{key}' is not an index shard key (collection/expert/shard/shards).");
        }
        return (parts[0], parts[1], shard, shards);
    }

    /// <summary>
    /// The documents <c>[first, first + count)</c> of shard <paramref name="shard"/>: equal slices, each start a
    /// multiple of <paramref name="align"/> (the embedding cache's chunk, so that shards reuse a whole-corpus cache).
    /// </summary>
    public static (int First, int Count) Range(int documents, int shard, int shards, int align = 1)
    {
        var size = (documents + shards - 1) / shards;
        size = Math.Max(align, (size + align - 1) / align * align);
        var first = Math.Min(documents, shard * size);
        return (first, Math.Min(size, documents - first));
    }
}
