using System.Globalization;
using System.Text.Json;

namespace MoeGrains.Retrieval;

/// <summary>
/// Reads the BEIR exchange format: <c>corpus.jsonl</c> (<c>_id</c>, <c>title</c>, <c>text</c>), <c>queries.jsonl</c>
/// (<c>_id</c>, <c>text</c>) and <c>qrels/test.tsv</c> (<c>query-id corpus-id score</c>, with a header line); a pair
/// with a score above 0 is relevant.
/// </summary>
internal static class BeirCollectionReader
{
    public const string CorpusFile = "corpus.jsonl";
    public const string QueriesFile = "queries.jsonl";
    public const string QrelsFile = "qrels/test.tsv";

    public static bool IsBeir(string folder) => File.Exists(Path.Combine(folder, CorpusFile));

    public static RetrievalCollection Read(string folder, string name)
    {
        foreach (var required in new[] { CorpusFile, QueriesFile, QrelsFile })
        {
            if (!File.Exists(Path.Combine(folder, required)))
            {
                throw new CollectionFormatException(Path.Combine(folder, required), 0, "missing: a BEIR collection needs corpus.jsonl, queries.jsonl and qrels/test.tsv");
            }
        }
        var documents = ReadJsonLines(Path.Combine(folder, CorpusFile), (o, file, line) =>
            new RetrievalDocument(RequiredId(o, file, line), OptionalString(o, "title", file, line), OptionalString(o, "text", file, line)));
        var queries = ReadJsonLines(Path.Combine(folder, QueriesFile), (o, file, line) =>
            new RetrievalQuery(RequiredId(o, file, line), OptionalString(o, "text", file, line)));
        CheckUnique(Path.Combine(folder, CorpusFile), documents.Select(d => d.Id));
        CheckUnique(Path.Combine(folder, QueriesFile), queries.Select(q => q.Id));
        var relevant = ReadQrels(Path.Combine(folder, QrelsFile), documents.Select(d => d.Id).ToHashSet(StringComparer.Ordinal),
            queries.Select(q => q.Id).ToHashSet(StringComparer.Ordinal));
        return new RetrievalCollection(name, CollectionFormat.Beir, documents, queries, relevant);
    }

    private static List<T> ReadJsonLines<T>(string path, Func<JsonElement, string, int, T> read)
    {
        var items = new List<T>();
        var number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (line.Trim().Length == 0)
            {
                continue;
            }
            JsonDocument json;
            try
            {
                json = JsonDocument.Parse(line);
            }
            catch (JsonException e)
            {
                throw new CollectionFormatException(path, number, $"not a JSON object: {e.Message}");
            }
            using (json)
            {
                if (json.RootElement.ValueKind != JsonValueKind.Object)
                {
                    throw new CollectionFormatException(path, number, $"expected a JSON object, got {json.RootElement.ValueKind}");
                }
                items.Add(read(json.RootElement, path, number));
            }
        }
        return items;
    }

    private static string RequiredId(JsonElement o, string file, int line)
    {
        if (!o.TryGetProperty("_id", out var id))
        {
            throw new CollectionFormatException(file, line, "missing \"_id\"");
        }
        return id.ValueKind switch
        {
            JsonValueKind.String when id.GetString() is { Length: > 0 } s => s,
            JsonValueKind.Number => id.GetRawText(),
            _ => throw new CollectionFormatException(file, line, "\"_id\" must be a non-empty string or a number"),
        };
    }

    private static string OptionalString(JsonElement o, string name, string file, int line)
    {
        if (!o.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return "";
        }
        return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw new CollectionFormatException(file, line, $"\"{name}\" must be a string");
    }

    private static void CheckUnique(string file, IEnumerable<string> ids)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var id in ids)
        {
            if (!seen.Add(id))
            {
                throw new CollectionFormatException(file, 0, $"duplicate \"_id\" '{id}'");
            }
        }
    }

    private static Dictionary<string, IReadOnlySet<string>> ReadQrels(string path, HashSet<string> documents, HashSet<string> queries)
    {
        var relevant = new Dictionary<string, HashSet<string>>(StringComparer.Ordinal);
        var number = 0;
        foreach (var line in File.ReadLines(path))
        {
            number++;
            if (line.Trim().Length == 0)
            {
                continue;
            }
            var parts = line.Split('\t');
            if (parts.Length != 3)
            {
                parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            }
            if (number == 1 && parts.Length > 0 && parts[0].Trim().Equals("query-id", StringComparison.OrdinalIgnoreCase))
            {
                continue; // header
            }
            if (parts.Length != 3)
            {
                throw new CollectionFormatException(path, number, $"expected 3 tab-separated columns (query-id, corpus-id, score), got {parts.Length}");
            }
            var (query, document) = (parts[0].Trim(), parts[1].Trim());
            if (!double.TryParse(parts[2].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var score))
            {
                throw new CollectionFormatException(path, number, $"score '{parts[2].Trim()}' is not a number");
            }
            if (!queries.Contains(query))
            {
                throw new CollectionFormatException(path, number, $"query '{query}' is not in {QueriesFile}");
            }
            if (!documents.Contains(document))
            {
                throw new CollectionFormatException(path, number, $"document '{document}' is not in {CorpusFile}");
            }
            if (score > 0)
            {
                if (!relevant.TryGetValue(query, out var set))
                {
                    relevant[query] = set = new HashSet<string>(StringComparer.Ordinal);
                }
                set.Add(document);
            }
        }
        return relevant.ToDictionary(p => p.Key, p => (IReadOnlySet<string>)p.Value, StringComparer.Ordinal);
    }
}
