namespace MoeGrains.Retrieval;

/// <summary>A document of a test collection: its id as the collection spells it, its title (may be empty) and its text.</summary>
public sealed record RetrievalDocument(string Id, string Title, string Text)
{
    /// <summary>What retrievers read: the title, then the text.</summary>
    public string FullText => Title.Length == 0 ? Text : Text.Length == 0 ? Title : Title + "\n" + Text;
}

/// <summary>A query of a test collection.</summary>
public sealed record RetrievalQuery(string Id, string Text);

/// <summary>The on-disk form a collection came in.</summary>
public enum CollectionFormat
{
    /// <summary>Classic SMART files (<c>.I .T .A .W .X</c> records) and a relevance file.</summary>
    Smart,

    /// <summary>BEIR: <c>corpus.jsonl</c>, <c>queries.jsonl</c>, <c>qrels/test.tsv</c>.</summary>
    Beir,
}

/// <summary>
/// A retrieval test collection: documents, queries and binary relevance judgements (query id → relevant document ids).
/// Load one with <see cref="Load"/>, which recognises the format from the folder's files.
/// </summary>
public sealed class RetrievalCollection
{
    private readonly Dictionary<string, int> _documentIndex;

    public RetrievalCollection(string name, CollectionFormat format, IReadOnlyList<RetrievalDocument> documents,
        IReadOnlyList<RetrievalQuery> queries, IReadOnlyDictionary<string, IReadOnlySet<string>> relevant)
    {
        Name = name;
        Format = format;
        Documents = documents;
        Queries = queries;
        Relevant = relevant;
        _documentIndex = new Dictionary<string, int>(documents.Count, StringComparer.Ordinal);
        for (var i = 0; i < documents.Count; i++)
        {
            _documentIndex.TryAdd(documents[i].Id, i);
        }
        JudgedQueries = [.. queries.Where(q => relevant.TryGetValue(q.Id, out var r) && r.Count > 0)];
    }

    public string Name { get; }

    public CollectionFormat Format { get; }

    public IReadOnlyList<RetrievalDocument> Documents { get; }

    public IReadOnlyList<RetrievalQuery> Queries { get; }

    /// <summary>For each judged query, the ids of its relevant documents.</summary>
    public IReadOnlyDictionary<string, IReadOnlySet<string>> Relevant { get; }

    /// <summary>The queries that have at least one relevant document: the ones evaluated (the usual convention).</summary>
    public IReadOnlyList<RetrievalQuery> JudgedQueries { get; }

    public int RelevantPairs => Relevant.Values.Sum(r => r.Count);

    /// <summary>The position of a document id in <see cref="Documents"/>, or -1.</summary>
    public int IndexOf(string documentId) => _documentIndex.TryGetValue(documentId, out var i) ? i : -1;

    /// <summary>Loads the collection in <paramref name="folder"/>, SMART or BEIR, whichever its files are.</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="CollectionFormatException">The files are of neither format, or malformed (file and line named).</exception>
    public static RetrievalCollection Load(string folder, string? name = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        var full = Path.GetFullPath(folder);
        if (!Directory.Exists(full))
        {
            throw new DirectoryNotFoundException($"No collection folder at {full}.");
        }
        name ??= Path.GetFileName(full.TrimEnd(Path.DirectorySeparatorChar));
        if (BeirCollectionReader.IsBeir(full))
        {
            return BeirCollectionReader.Read(full, name);
        }
        if (SmartCollectionReader.IsSmart(full))
        {
            return SmartCollectionReader.Read(full, name);
        }
        throw new CollectionFormatException(full, 0,
            "not a retrieval collection: expected BEIR files (corpus.jsonl, queries.jsonl, qrels/test.tsv) or SMART files (records starting with '.I', and a relevance file)");
    }

    public override string ToString() => $"{Name} ({Format}: {Documents.Count} documents, {Queries.Count} queries, {JudgedQueries.Count} judged, {RelevantPairs} relevant pairs)";
}

/// <summary>A collection file is malformed; the message names the file and, where it applies, the line.</summary>
public sealed class CollectionFormatException(string file, int line, string message)
    : FormatException(line > 0 ? $"{file}:{line}: {message}" : $"{file}: {message}")
{
    public string File { get; } = file;

    /// <summary>The 1-based line, or 0 when the problem is the file as a whole.</summary>
    public int Line { get; } = line;
}
