using MoeGrains.Retrieval;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Retrieval;

public sealed class CollectionLoaderTests
{
    [Theory]
    [InlineData("med", 1033, 30, 30, 696, 0)]
    [InlineData("cran", 1400, 225, 225, 1612, 2)] // records 471 and 995 have empty fields in cran.all.1400
    [InlineData("cisi", 1460, 112, 76, 3114, 0)]
    [InlineData("cacm", 3204, 64, 52, 796, 0)]
    public void Each_SMART_collection_loads_with_its_counts(string name, int documents, int queries, int judged, int pairs, int empty)
    {
        var collection = RetrievalCollection.Load(RetrievalData.Collection(name));
        Assert.Equal(CollectionFormat.Smart, collection.Format);
        Assert.Equal(name, collection.Name);
        Assert.Equal(documents, collection.Documents.Count);
        Assert.Equal(queries, collection.Queries.Count);
        Assert.Equal(judged, collection.JudgedQueries.Count);
        Assert.Equal(pairs, collection.RelevantPairs);
        Assert.Equal(empty, collection.Documents.Count(d => string.IsNullOrWhiteSpace(d.FullText)));
        Assert.All(collection.Queries, q => Assert.False(string.IsNullOrWhiteSpace(q.Text)));
        Assert.All(collection.Relevant.Values.SelectMany(r => r), id => Assert.True(collection.IndexOf(id) >= 0));
    }

    [Fact]
    public void Cranfield_queries_are_renumbered_by_position_and_its_source_documents_are_not_relevant()
    {
        var cran = RetrievalCollection.Load(RetrievalData.Collection("cran"));
        // cran.qry numbers its third query 004; cranqrel calls it 3.
        Assert.Equal("3", cran.Queries[2].Id);
        Assert.StartsWith("what problems of heat conduction in composite slabs", cran.Queries[2].Text, StringComparison.Ordinal);
        Assert.Equal(Enumerable.Range(1, 225).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)), cran.Queries.Select(q => q.Id));
        // Query 1's -1 line names document 1: the paper the question came from, not a relevant answer.
        Assert.DoesNotContain("1", cran.Relevant["1"]);
        Assert.Contains("184", cran.Relevant["1"]);
        Assert.StartsWith("experimental investigation of the aerodynamics", cran.Documents[0].Title, StringComparison.Ordinal);
    }

    [Fact]
    public void Zero_padded_ids_match_across_files()
    {
        var cacm = RetrievalCollection.Load(RetrievalData.Collection("cacm"));
        Assert.Equal(5, cacm.Relevant["1"].Count); // qrels.text writes the query as 01
    }

    private static void WriteBeir(string folder, string? corpus = null, string? queries = null, string? qrels = null)
    {
        Directory.CreateDirectory(Path.Combine(folder, "qrels"));
        File.WriteAllText(Path.Combine(folder, "corpus.jsonl"), corpus ??
            """
            {"_id": "d1", "title": "Heart disease", "text": "The heart pumps blood.", "metadata": {}}
            {"_id": "d2", "title": "", "text": "Rockets and jet engines."}
            {"_id": 3, "text": "Numbers as ids are allowed."}

            """);
        File.WriteAllText(Path.Combine(folder, "queries.jsonl"), queries ??
            """
            {"_id": "q1", "text": "blood pumping organ"}
            {"_id": "q2", "text": "propulsion"}
            {"_id": "q3", "text": "unjudged"}
            """);
        File.WriteAllText(Path.Combine(folder, "qrels", "test.tsv"), qrels ?? "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\t3\t0\n");
    }

    [Fact]
    public void A_BEIR_collection_written_to_a_folder_loads()
    {
        using var dir = TestPaths.Temp();
        WriteBeir(dir.Path);
        var beir = RetrievalCollection.Load(dir.Path, "tiny");
        Assert.Equal(CollectionFormat.Beir, beir.Format);
        Assert.Equal(["d1", "d2", "3"], beir.Documents.Select(d => d.Id));
        Assert.Equal("Heart disease\nThe heart pumps blood.", beir.Documents[0].FullText);
        Assert.Equal("Rockets and jet engines.", beir.Documents[1].FullText);
        Assert.Equal(3, beir.Queries.Count);
        Assert.Equal(["q1", "q2"], beir.JudgedQueries.Select(q => q.Id));
        Assert.Equal(["d2"], beir.Relevant["q2"]); // a score of 0 is not relevant
        Assert.Equal(2, beir.RelevantPairs);
    }

    [Fact]
    public void A_small_SMART_collection_with_TREC_style_qrels_loads()
    {
        using var dir = TestPaths.Temp();
        File.WriteAllText(dir.File("TINY.ALL"), ".I 1\n.T\nfirst title\n.W\nfirst body\n.I 2\n.W\nsecond body\n.I 3\n.W\nthird\n");
        File.WriteAllText(dir.File("TINY.QRY"), ".I 1\n.W\nfirst?\n.I 2\n.W\nsecond?\n");
        File.WriteAllText(dir.File("TINY.REL"), "1 0 1 1\n2 0 2 1\n2 0 3 0\n");
        File.WriteAllText(dir.File("TINY.REL.OLD"), "garbage that is ignored\n");
        var tiny = RetrievalCollection.Load(dir.Path);
        Assert.Equal(3, tiny.Documents.Count);
        Assert.Equal("first title\nfirst body", tiny.Documents[0].FullText);
        Assert.Equal(["2"], tiny.Relevant["2"]);
    }

    [Fact]
    public void Malformed_BEIR_files_are_reported_with_file_and_line()
    {
        using var dir = TestPaths.Temp();
        WriteBeir(dir.Path, corpus: "{\"_id\": \"d1\", \"text\": \"ok\"}\n{\"_id\": \"d2\", \"text\": \n");
        var e = Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path));
        Assert.Contains("corpus.jsonl:2:", e.Message);
        Assert.Equal(2, e.Line);

        WriteBeir(dir.Path, corpus: "{\"title\": \"no id\"}\n");
        Assert.Contains("corpus.jsonl:1: missing \"_id\"", Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path)).Message);

        WriteBeir(dir.Path, qrels: "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tnope\t1\n");
        var unknown = Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path));
        Assert.Contains("test.tsv:3: document 'nope' is not in corpus.jsonl", unknown.Message);

        WriteBeir(dir.Path, qrels: "q1\td1\tmany\n");
        Assert.Contains("test.tsv:1: score 'many' is not a number", Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path)).Message);

        File.Delete(Path.Combine(dir.Path, "queries.jsonl"));
        Assert.Contains("queries.jsonl: missing", Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path)).Message);
    }

    [Fact]
    public void Malformed_SMART_files_are_reported_with_file_and_line()
    {
        using var dir = TestPaths.Temp();
        File.WriteAllText(dir.File("A.ALL"), ".I 1\n.W\none\n.I 2\n.W\ntwo\n.I 3\n.W\nthree\n");
        File.WriteAllText(dir.File("A.QRY"), ".I 1\n.W\nq\n");
        File.WriteAllText(dir.File("A.REL"), "1 1 0 0\n1 9 0 0\n");
        var e = Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path));
        Assert.Contains("A.REL:2: document '9' is not in A.ALL", e.Message);

        File.WriteAllText(dir.File("A.ALL"), ".I 1\n.W\none\n.I 1\n.W\ntwo\n.I 3\n");
        Assert.Contains("A.ALL:4: duplicate record id '1'", Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path)).Message);
    }

    [Fact]
    public void A_folder_of_neither_format_or_a_missing_folder_is_a_clear_error()
    {
        using var dir = TestPaths.Temp();
        File.WriteAllText(dir.File("notes.txt"), "hello\n");
        Assert.Contains("not a retrieval collection", Assert.Throws<CollectionFormatException>(() => RetrievalCollection.Load(dir.Path)).Message);
        Assert.Throws<DirectoryNotFoundException>(() => RetrievalCollection.Load(dir.File("nowhere")));
    }
}
