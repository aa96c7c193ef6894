using System.Globalization;

namespace MoeGrains.Retrieval;

/// <summary>
/// Reads classic SMART collections (MED, CRAN, CISI, CACM, ...) from a folder, recognising the files by their content:
/// record files start with <c>.I id</c> (the larger is the corpus, the other the queries); the relevance file has
/// lines of 3 or 4 numbers. Documents are their <c>.T</c> and <c>.W</c> fields; queries their <c>.W</c> field
/// (<c>.T</c> where a query has none). Relevance is binary; the quirks of each layout are handled here.
/// </summary>
internal static class SmartCollectionReader
{
    /// <summary>Names of files never read: stale copies, notes and licences.</summary>
    private static bool IsIgnored(string path)
    {
        var name = Path.GetFileName(path).ToLowerInvariant();
        return name.StartsWith('.') || name.EndsWith(".old", StringComparison.Ordinal) || name.EndsWith(".bak", StringComparison.Ordinal) ||
            name.EndsWith(".md", StringComparison.Ordinal) || name.StartsWith("readme", StringComparison.Ordinal) ||
            name.StartsWith("license", StringComparison.Ordinal) || name.EndsWith(".readme", StringComparison.Ordinal);
    }

    private static IEnumerable<string> Candidates(string folder) =>
        Directory.EnumerateFiles(folder).Where(f => !IsIgnored(f)).Order(StringComparer.Ordinal);

    public static bool IsSmart(string folder) => Candidates(folder).Any(IsRecordFile);

    private static bool IsRecordFile(string path) => FirstLine(path) is { } line && line.StartsWith(".I", StringComparison.Ordinal) && SmartRecord.IsIdLine(line);

    private static string? FirstLine(string path)
    {
        using var reader = new StreamReader(path);
        for (var i = 0; i < 50 && reader.ReadLine() is { } line; i++)
        {
            if (line.Trim().Length > 0)
            {
                return line.Trim();
            }
        }
        return null;
    }

    public static RetrievalCollection Read(string folder, string name)
    {
        var recordFiles = Candidates(folder).Where(IsRecordFile).Select(f => (File: f, Records: SmartRecord.ReadAll(f))).OrderByDescending(r => r.Records.Count).ToList();
        if (recordFiles.Count < 2)
        {
            throw new CollectionFormatException(folder, 0, $"a SMART collection needs a document file and a query file (records starting with '.I'); found {recordFiles.Count}");
        }
        if (recordFiles.Count > 2)
        {
            throw new CollectionFormatException(folder, 0, $"more than two SMART record files ({string.Join(", ", recordFiles.Select(r => Path.GetFileName(r.File)))}): cannot tell documents from queries");
        }
        var (docFile, docRecords) = recordFiles[0];
        var (queryFile, queryRecords) = recordFiles[1];
        var documents = docRecords.Select(r => new RetrievalDocument(r.Id, r.Field('T'), r.Field('W'))).ToList();
        var queries = queryRecords.Select(r => new RetrievalQuery(r.Id, r.Field('W') is { Length: > 0 } w ? w : r.Field('T'))).ToList();
        CheckUnique(docFile, docRecords);
        CheckUnique(queryFile, queryRecords);

        var qrelFiles = Candidates(folder).Where(f => f != docFile && f != queryFile && IsQrelFile(f)).ToList();
        if (qrelFiles.Count != 1)
        {
            throw new CollectionFormatException(folder, 0, qrelFiles.Count == 0
                ? "no relevance file (lines of 3 or 4 numbers: query, document, ...)"
                : $"more than one relevance file ({string.Join(", ", qrelFiles.Select(Path.GetFileName))}): rename or remove the stale ones (*.old is ignored)");
        }
        var judgements = ReadQrels(qrelFiles[0]);

        // Cranfield's quirk: cran.qry numbers its queries 001, 002, 004, 008, ... but cranqrel numbers them 1..225 by
        // position. When some judged id names no query, and numbering the queries by position fixes that, renumber.
        var ids = queries.Select(q => q.Id).ToHashSet(StringComparer.Ordinal);
        var judged = judgements.Select(j => j.Query).ToHashSet(StringComparer.Ordinal);
        if (!judged.IsSubsetOf(ids))
        {
            var positions = Enumerable.Range(1, queries.Count).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToHashSet(StringComparer.Ordinal);
            if (judged.IsSubsetOf(positions))
            {
                queries = [.. queries.Select((q, i) => q with { Id = (i + 1).ToString(CultureInfo.InvariantCulture) })];
            }
            else
            {
                var missing = judged.Except(ids).Order(StringComparer.Ordinal).Take(5);
                throw new CollectionFormatException(qrelFiles[0], 0, $"judges queries that {Path.GetFileName(queryFile)} does not have: {string.Join(", ", missing)}");
            }
        }
        var docIds = documents.Select(d => d.Id).ToHashSet(StringComparer.Ordinal);
        if (judgements.FirstOrDefault(j => !docIds.Contains(j.Document)) is { Query: not null } unknown)
        {
            throw new CollectionFormatException(qrelFiles[0], unknown.Line, $"document '{unknown.Document}' is not in {Path.GetFileName(docFile)}");
        }
        var relevant = judgements.Where(j => j.Relevant).GroupBy(j => j.Query, StringComparer.Ordinal)
            .ToDictionary(g => g.Key, g => (IReadOnlySet<string>)g.Select(j => j.Document).ToHashSet(StringComparer.Ordinal), StringComparer.Ordinal);
        return new RetrievalCollection(name, CollectionFormat.Smart, documents, queries, relevant);
    }

    private static void CheckUnique(string file, IReadOnlyList<SmartRecord> records)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var r in records)
        {
            if (!seen.Add(r.Id))
            {
                throw new CollectionFormatException(file, r.Line, $"duplicate record id '{r.Id}'");
            }
        }
    }

    private static bool IsQrelFile(string path)
    {
        var lines = 0;
        foreach (var line in File.ReadLines(path).Take(200))
        {
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0)
            {
                continue;
            }
            if (parts.Length is < 3 or > 4 || !parts.All(p => double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out _)))
            {
                return false;
            }
            lines++;
        }
        return lines > 0;
    }

    private sealed record Judgement(string Query, string Document, bool Relevant, int Line);

    /// <summary>
    /// The layouts in use: <c>q 0 d 1</c> (TREC, MED.REL: the second column is all zeros, the fourth the grade);
    /// <c>q d 0 0.0</c> (CISI.REL) and <c>q d 0 0</c> (CACM): every listed pair is relevant; <c>q d code</c>
    /// (cranqrel): codes 1-4 are degrees of relevance, all taken as relevant, and -1 marks the document the question was
    /// drawn from, not a judgement of relevance, so it is not relevant.
    /// </summary>
    private static List<Judgement> ReadQrels(string path)
    {
        var rows = new List<(string[] Parts, int Line)>();
        var number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            var parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 0)
            {
                continue;
            }
            if (parts.Length is < 3 or > 4)
            {
                throw new CollectionFormatException(path, number, $"expected 3 or 4 columns (query, document, ...), got {parts.Length}");
            }
            foreach (var p in parts)
            {
                if (!double.TryParse(p, NumberStyles.Float, CultureInfo.InvariantCulture, out _))
                {
                    throw new CollectionFormatException(path, number, $"'{p}' is not a number");
                }
            }
            rows.Add((parts, number));
        }
        if (rows.Count == 0)
        {
            throw new CollectionFormatException(path, 0, "the relevance file is empty");
        }
        var width = rows[0].Parts.Length;
        if (rows.FirstOrDefault(r => r.Parts.Length != width) is { Parts: not null } odd)
        {
            throw new CollectionFormatException(path, odd.Line, $"expected {width} columns like the first line, got {odd.Parts.Length}");
        }
        var trec = width == 4 && rows.All(r => r.Parts[1] == "0");
        return [.. rows.Select(r => trec
            ? new Judgement(Id(r.Parts[0]), Id(r.Parts[2]), Grade(r.Parts[3]) > 0, r.Line)
            : width == 3
                ? new Judgement(Id(r.Parts[0]), Id(r.Parts[1]), Grade(r.Parts[2]) > 0, r.Line)
                : new Judgement(Id(r.Parts[0]), Id(r.Parts[1]), true, r.Line))];
    }

    private static double Grade(string text) => double.Parse(text, NumberStyles.Float, CultureInfo.InvariantCulture);

    /// <summary>Ids are compared as numbers written without leading zeros ("01" and "1" are the same query).</summary>
    internal static string Id(string text) =>
        long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n.ToString(CultureInfo.InvariantCulture) : text;
}

/// <summary>One <c>.I</c> record of a SMART file and its fields (<c>.T</c>, <c>.A</c>, <c>.W</c>, ...).</summary>
internal sealed class SmartRecord(string id, int line)
{
    private readonly Dictionary<char, List<string>> _fields = [];

    public string Id { get; } = id;

    public int Line { get; } = line;

    public string Field(char name) => _fields.TryGetValue(name, out var lines) ? string.Join('\n', lines).Trim() : "";

    internal static bool IsIdLine(string trimmed) =>
        trimmed.Length > 3 && trimmed[0] == '.' && trimmed[1] == 'I' && char.IsWhiteSpace(trimmed[2]) && !trimmed[3..].Trim().Contains(' ');

    /// <summary>A field marker is a line holding only a dot and one capital letter.</summary>
    private static bool IsFieldLine(string trimmed) => trimmed.Length == 2 && trimmed[0] == '.' && char.IsAsciiLetterUpper(trimmed[1]);

    public static List<SmartRecord> ReadAll(string path)
    {
        var records = new List<SmartRecord>();
        SmartRecord? current = null;
        List<string>? field = null;
        var number = 0;
        foreach (var raw in File.ReadLines(path))
        {
            number++;
            var trimmed = raw.Trim();
            if (trimmed.StartsWith(".I", StringComparison.Ordinal) && (trimmed.Length == 2 || char.IsWhiteSpace(trimmed[2])))
            {
                if (!IsIdLine(trimmed))
                {
                    throw new CollectionFormatException(path, number, $"a record must start with '.I <id>', got '{trimmed}'");
                }
                current = new SmartRecord(SmartCollectionReader.Id(trimmed[2..].Trim()), number);
                records.Add(current);
                field = null;
            }
            else if (IsFieldLine(trimmed))
            {
                if (current is null)
                {
                    throw new CollectionFormatException(path, number, $"field '{trimmed}' before the first '.I' record");
                }
                if (!current._fields.TryGetValue(trimmed[1], out field))
                {
                    field = [];
                    current._fields[trimmed[1]] = field;
                }
            }
            else if (trimmed.Length > 0)
            {
                if (current is null)
                {
                    throw new CollectionFormatException(path, number, "text before the first '.I' record");
                }
                field?.Add(raw.TrimEnd());
            }
        }
        return records;
    }
}
