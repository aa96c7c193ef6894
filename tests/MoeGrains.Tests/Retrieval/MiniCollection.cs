using System.Text.Json;
using MoeGrains.Retrieval;

namespace MoeGrains.Tests.Retrieval;

/// <summary>
/// A small real collection in BEIR form, cut from MED and CISI: the first judged queries of each, their relevant
/// documents (at most 4 each) and a few unjudged documents, so that search and routing stay fast in tests.
/// </summary>
internal static class MiniCollection
{
    public static RetrievalCollection Write(string folder, int queriesPerSource = 4)
    {
        Directory.CreateDirectory(Path.Combine(folder, "qrels"));
        var corpus = new List<string>();
        var queries = new List<string>();
        var qrels = new List<string> { "query-id\tcorpus-id\tscore" };
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var source in new[] { "med", "cisi" })
        {
            var c = RetrievalCollection.Load(RetrievalData.Collection(source));
            void AddDocument(RetrievalDocument d)
            {
                if (seen.Add($"{source}-{d.Id}"))
                {
                    corpus.Add(JsonSerializer.Serialize(new Dictionary<string, string> { ["_id"] = $"{source}-{d.Id}", ["title"] = d.Title, ["text"] = string.Join(' ', d.Text.Split(' ').Take(60)) }));
                }
            }
            foreach (var q in c.JudgedQueries.Take(queriesPerSource))
            {
                queries.Add(JsonSerializer.Serialize(new Dictionary<string, string> { ["_id"] = $"{source}-{q.Id}", ["text"] = q.Text }));
                foreach (var d in c.Relevant[q.Id].Order(StringComparer.Ordinal).Take(4))
                {
                    AddDocument(c.Documents[c.IndexOf(d)]);
                    qrels.Add($"{source}-{q.Id}\t{source}-{d}\t1");
                }
            }
            foreach (var d in c.Documents.Skip(100).Take(4))
            {
                AddDocument(d);
            }
        }
        File.WriteAllLines(Path.Combine(folder, "corpus.jsonl"), corpus);
        File.WriteAllLines(Path.Combine(folder, "queries.jsonl"), queries);
        File.WriteAllLines(Path.Combine(folder, "qrels", "test.tsv"), qrels);
        return RetrievalCollection.Load(folder, "mini");
    }
}
