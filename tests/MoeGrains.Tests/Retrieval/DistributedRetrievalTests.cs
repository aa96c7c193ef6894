using MoeGrains.Hosting;
using MoeGrains.Retrieval;
using MoeGrains.Retrieval.Serving;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Retrieval;

/// <summary>
/// Three real silos serving a small MED + CISI collection with BM25, MiniLM and a saved domain adapter on MiniLM
/// (served by the plugin from its file), the embedding indexes in three shards.
/// </summary>
public sealed class RetrievalClusterFixture() : LocalClusterFixture(3)
{
    public const int Shards = 3;
    public RetrievalCollection Collection { get; private set; } = null!;

    public string Folder => Dir.File("mini");

    public string Adapters => Dir.File("adapters");

    public const string Adapter = "adapter-mini";

    public static Dictionary<string, string> Settings => new() { ["threads"] = "1", ["max_words"] = "48" };

    protected override void Prepare()
    {
        Collection = MiniCollection.Write(Folder);
        using var minilmShape = new RetrievalAdapterFileTests.FakeBase("minilm", 384);
        RetrievalAdapterFileTests.Save(Adapters, Adapter, minilmShape);
    }

    protected override void Configure(ISiloBuilder silo) => silo
        .AddMoeGrains(o => o.Device = "cpu")
        .AddExpertPlugins(TestPaths.Plugins)
        .AddMoeGrainsRetrieval(o =>
        {
            o.Collections["mini"] = Folder;
            o.Experts = $"bm25,minilm,{Adapter}";
            o.Adapters = Adapters;
            o.Shards = Shards;
            o.Threads = 1;
            o.MaxWords = 48;
            o.MaxK = 100;
        });
}

public sealed class DistributedRetrievalTests(RetrievalClusterFixture fixture) : IClassFixture<RetrievalClusterFixture>
{
    private static readonly string[] Queries =
    [
        "the crystalline lens in vertebrates, including humans",
        "problems of retrieving documents from a library catalogue by computer",
        "blood pressure of children with heart disease",
        "indexing vocabulary and thesaurus construction",
    ];

    [Fact]
    public async Task Routing_and_top_k_on_three_silos_equal_the_same_flow_in_process()
    {
        using var bm25 = RetrieverPlugins.Create("bm25");
        using var minilm = RetrieverPlugins.Create("minilm", RetrievalClusterFixture.Settings);
        using var adapter = LinearAdapterExpert.Load(LinearAdapterExpert.FileFor(fixture.Adapters, RetrievalClusterFixture.Adapter), minilm);
        string[] experts = ["bm25", "minilm", RetrievalClusterFixture.Adapter];
        using var local = new InProcessRetrieval(fixture.Collection, new Dictionary<string, IRetrieverExpert>
        {
            ["bm25"] = bm25, ["minilm"] = minilm, [RetrievalClusterFixture.Adapter] = adapter,
        });
        var flow = new RetrievalFlow(fixture.Collection, experts, "minilm", local);
        var grain = fixture.Cluster.GrainFactory.GetGrain<IRetrievalGrain>("mini");
        var routedTo = new HashSet<string>();
        var requests = Queries.SelectMany(q => new[] { new RetrievalRequest(q, 7) }
            .Concat(experts.Select(e => new RetrievalRequest(q, 7, e)))
            .Concat(QueryRouter.Names.Select(r => new RetrievalRequest(q, 7, Router: r))));
        foreach (var request in requests)
        {
            var expected = await flow.Search(request);
            var actual = await grain.Search(request);
            Assert.Equal(expected.Expert, actual.Expert);
            Assert.Equal(request.Expert is null, actual.Routed);
            Assert.Equal(request.Expert is null ? request.Router ?? "weighted-fusion" : "", actual.Router); // the default: the evaluation's best
            Assert.Equal(expected.RouterScores.Length, actual.RouterScores.Length);
            for (var e = 0; e < expected.RouterScores.Length; e++)
            {
                Assert.Equal(expected.RouterScores[e], actual.RouterScores[e], 4);
            }
            Assert.Equal(expected.Weights is null, actual.Weights is null);
            Assert.Equal(expected.Hits.Select(h => h.Id), actual.Hits.Select(h => h.Id));
            for (var i = 0; i < expected.Hits.Length; i++)
            {
                Assert.Equal(expected.Hits[i].Score, actual.Hits[i].Score, 4);
            }
            Assert.Equal(7, actual.Hits.Length);
            if (actual.Expert is "minilm" or RetrievalClusterFixture.Adapter)
            {
                // The embedding index is three shards, one per silo: every silo answered.
                Assert.Equal(RetrievalClusterFixture.Shards, actual.ShardSilos.Length);
            }
            if (request.Expert is null && request.Router is not "weighted-fusion" and not null)
            {
                routedTo.Add(actual.Expert);
            }
        }
        Assert.NotEmpty(routedTo);
        // The adapter searches differently from its base (its queries are mapped), on the same documents.
        var viaAdapter = await grain.Search(new RetrievalRequest(Queries[0], 7, RetrievalClusterFixture.Adapter));
        var viaBase = await grain.Search(new RetrievalRequest(Queries[0], 7, "minilm"));
        Assert.NotEqual(viaBase.Hits.Select(h => h.Score), viaAdapter.Hits.Select(h => h.Score));
    }

    [Fact]
    public async Task Bad_requests_get_errors_naming_the_field()
    {
        var grain = fixture.Cluster.GrainFactory.GetGrain<IRetrievalGrain>("mini");
        var empty = await Assert.ThrowsAsync<RetrievalRequestException>(() => grain.Search(new RetrievalRequest("   ", 5)));
        Assert.Equal("query", empty.Field);
        var huge = await Assert.ThrowsAsync<RetrievalRequestException>(() => grain.Search(new RetrievalRequest("heart", 1_000_000)));
        Assert.Equal("k", huge.Field);
        Assert.Contains("100", huge.Message, StringComparison.Ordinal);
        var expert = await Assert.ThrowsAsync<RetrievalRequestException>(() => grain.Search(new RetrievalRequest("heart", 5, "nope")));
        Assert.Equal("expert", expert.Field);
        var router = await Assert.ThrowsAsync<RetrievalRequestException>(() => grain.Search(new RetrievalRequest("heart", 5, Router: "best")));
        Assert.Equal("router", router.Field);
        Assert.Contains("domain-pilots", router.Message, StringComparison.Ordinal);
        var unknown = await Assert.ThrowsAsync<RetrievalRequestException>(() =>
            fixture.Cluster.GrainFactory.GetGrain<IRetrievalGrain>("no-such-collection").Search(new RetrievalRequest("heart", 5)));
        Assert.Equal("collection", unknown.Field);
        Assert.Contains("no-such-collection", unknown.Message, StringComparison.Ordinal);
        // The silo still answers after the refusals.
        Assert.Equal(5, (await grain.Search(new RetrievalRequest("crystalline lens of the eye", 5, "bm25"))).Hits.Length);
    }

    [Fact]
    public void Shard_ranges_cover_the_collection_once_and_align_to_cache_chunks()
    {
        foreach (var (documents, shards, align) in new[] { (10, 3, 1), (1033, 2, 256), (3204, 4, 256), (5, 8, 1), (0, 2, 1) })
        {
            var ranges = Enumerable.Range(0, shards).Select(s => RetrievalKeys.Range(documents, s, shards, align)).ToList();
            Assert.Equal(documents, ranges.Sum(r => r.Count));
            var covered = ranges.SelectMany(r => Enumerable.Range(r.First, r.Count)).ToList();
            Assert.Equal(Enumerable.Range(0, documents), covered);
            Assert.All(ranges.Where(r => r.Count > 0), r => Assert.Equal(0, r.First % align));
        }
    }
}
