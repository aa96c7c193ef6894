using MoeGrains.Retrieval;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Retrieval;

public sealed class RetrievalBenchmarkTests
{
    /// <summary>Two small domains: in 'words' the lexical expert wins, in 'topics' the counting expert does.</summary>
    private static RetrievalCollection Domain(string name, bool lexicalWins)
    {
        var docs = new List<RetrievalDocument>();
        var queries = new List<RetrievalQuery>();
        var relevant = new Dictionary<string, IReadOnlySet<string>>();
        for (var i = 0; i < 12; i++)
        {
            var topic = new[] { "heart", "rocket", "library" }[i % 3];
            docs.Add(new RetrievalDocument($"{name}-d{i}", "", lexicalWins ? $"token{i} filler" : $"{topic} {topic} filler{i}"));
            docs.Add(new RetrievalDocument($"{name}-n{i}", "", $"{topic} noise{i}"));
            queries.Add(new RetrievalQuery($"q{i}", lexicalWins ? $"token{i}" : $"{topic} filler{i}"));
            relevant[$"q{i}"] = new HashSet<string> { $"{name}-d{i}" };
        }
        return new RetrievalCollection(name, CollectionFormat.Beir, docs, queries, relevant);
    }

    [Fact]
    public void Every_system_is_reported_per_collection_and_macro_averaged_and_the_oracle_bounds_the_experts()
    {
        using var bm25 = RetrieverPlugins.Create("bm25");
        using var counting = new ExactIndexTests.CountingExpert();
        using var cache = TestPaths.Temp();
        var benchmark = new RetrievalBenchmark([("bm25", bm25), ("counting", counting)],
            new RetrievalBenchmarkOptions { RouterEncoder = "counting", Cache = new EmbeddingCache(cache.Path) });
        var report = benchmark.Run([Domain("words", true), Domain("topics", false)]);

        var names = new[] { "bm25", "counting", RetrievalBenchmark.Fusion, RetrievalBenchmark.RouterNearest, RetrievalBenchmark.RouterMean,
            RetrievalBenchmark.RouterDomain, RetrievalBenchmark.RouterWeighted, RetrievalBenchmark.Oracle };
        Assert.Equal(names, report.Macro.Select(s => s.Name));
        Assert.All(report.Collections, c => Assert.Equal(names, c.Systems.Select(s => s.Name)));
        Assert.Equal(12, report.Collections[0].Queries);
        foreach (var c in report.Collections)
        {
            var oracle = c.Systems.Single(s => s.Name == RetrievalBenchmark.Oracle).NdcgAt10;
            // The oracle bounds every system that answers with one expert's list (fusions mix lists and may pass it).
            Assert.All(c.Systems.Where(s => !s.Name.Contains("fusion", StringComparison.Ordinal)),
                s => Assert.True(s.NdcgAt10 <= oracle + 1e-12, $"{s.Name} {s.NdcgAt10} above the oracle {oracle} on {c.Name}"));
            // Each domain has one clearly better expert, and its queries are told apart by the router encoder: the
            // domain pilots pick it for every query.
            var best = c.Systems.Take(2).Max(s => s.NdcgAt10);
            Assert.Equal(best, c.Systems.Single(s => s.Name == RetrievalBenchmark.RouterDomain).NdcgAt10, 9);
        }
        Assert.Equal(report.Collections.Average(c => c.Systems[0].NdcgAt10), report.Macro[0].NdcgAt10, 12);
        Assert.Contains("2-fold cross-validation", report.Split);
        // Embeddings were cached on disk, one file per (expert, role, chunk), per collection.
        Assert.NotEmpty(Directory.GetFiles(Path.Combine(cache.Path, "words"), "counting-document-*.safetensors"));
        Assert.All(report.RouterChoices.Values, c => Assert.Equal(3, c.Count)); // the three routers that choose one expert
        Assert.Equal(24, report.RouterChoices.Values.Sum(c => c["nearest-pilot"].Values.Sum()));
    }

    [Fact]
    public void Softmax_weights_sum_to_one_and_ignore_experts_without_pilots()
    {
        var w = QueryRouter.Softmax([0.30f, 0.25f, float.NegativeInfinity], 0.05);
        Assert.Equal(1.0, w.Sum(), 5);
        Assert.Equal(0f, w[2]);
        Assert.Equal(Math.Exp(1) / (1 + Math.Exp(1)), w[0], 5); // (0.30 - 0.25) / 0.05 = 1
    }
}
