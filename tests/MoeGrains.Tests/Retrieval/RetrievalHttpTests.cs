using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using MoeGrains.Hosting;
using MoeGrains.Retrieval;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Reliability;
using MoeGrains.Tests.Serving;

namespace MoeGrains.Tests.Retrieval;

/// <summary>The real silo host (hosts/MoeGrains.Silo, its own process) serving the small MED + CISI collection over HTTP.</summary>
public sealed class SiloHostFixture : IAsyncLifetime
{
    private readonly TempFolder _dir = TestPaths.Temp();
    private SiloHostRunner? _host;

    public HttpClient Http => _host?.Http ?? throw new InvalidOperationException("The silo host is not started.");

    public RetrievalCollection Collection { get; private set; } = null!;

    public string Log => _host?.Log ?? "";

    public async Task InitializeAsync()
    {
        var folder = _dir.File("mini");
        Collection = MiniCollection.Write(folder);
        _host = await SiloHostRunner.StartAsync(
        [
            $"--MoeGrains:Retrieval:Collections:mini={folder}", "--MoeGrains:Retrieval:Experts=bm25,minilm", "--MoeGrains:Retrieval:Threads=1",
            "--MoeGrains:Retrieval:MaxWords=48", "--MoeGrains:Retrieval:MaxTexts=8", "--MoeGrains:Retrieval:MaxTextChars=2000",
            "--MoeGrains:Retrieval:MaxK=100", "--MoeGrains:Retrieval:Shards=2",
        ], "/health/live", TimeSpan.FromSeconds(90), TimeSpan.FromMinutes(5));
    }

    public Task DisposeAsync()
    {
        _host?.Dispose();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}

public sealed class RetrievalHttpTests(SiloHostFixture silo) : IClassFixture<SiloHostFixture>
{
    private async Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, string json)
    {
        using var response = await silo.Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        var text = await response.Content.ReadAsStringAsync();
        try
        {
            return (response.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
        }
        catch (JsonException)
        {
            throw new InvalidOperationException($"{path} answered {(int)response.StatusCode} with non-JSON '{text}'\n{silo.Log}");
        }
    }

    [Fact]
    public async Task Embeddings_are_unit_vectors_that_match_the_plugin_in_process()
    {
        var (status, body) = await Post("/v1/embeddings", """{"model": "minilm", "input": ["the crystalline lens of the eye", "library catalogues"]}""");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        var data = body.GetProperty("data").EnumerateArray().ToList();
        Assert.Equal(2, data.Count);
        Assert.Equal(1, data[1].GetProperty("index").GetInt32());
        var vector = data[0].GetProperty("embedding").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        Assert.Equal(384, vector.Length);
        Assert.Equal(1.0, Math.Sqrt(vector.Sum(v => (double)v * v)), 3);
        using var minilm = RetrieverPlugins.Create("minilm", new() { ["threads"] = "1", ["max_words"] = "48" });
        using var local = minilm.Encode(["the crystalline lens of the eye"], EncodeRole.Document);
        var expected = local.data<float>().ToArray();
        for (var i = 0; i < 384; i++)
        {
            Assert.Equal(expected[i], vector[i], 4);
        }
        var (single, one) = await Post("/v1/embeddings", """{"model": "minilm", "input": "one text", "input_type": "query"}""");
        Assert.Equal(HttpStatusCode.OK, single);
        Assert.Single(one.GetProperty("data").EnumerateArray());
    }

    [Theory]
    [InlineData("""{"input": "x"}""", "model")]
    [InlineData("""{"model": "nope", "input": "x"}""", "model")]
    [InlineData("""{"model": "bm25", "input": "x"}""", "model")]
    [InlineData("""{"model": "minilm"}""", "input")]
    [InlineData("""{"model": "minilm", "input": 5}""", "input")]
    [InlineData("""{"model": "minilm", "input": []}""", "input")]
    [InlineData("""{"model": "minilm", "input": ["a", 3]}""", "input")]
    [InlineData("""{"model": "minilm", "input": ["", "b"]}""", "input")]
    [InlineData("""{"model": "minilm", "input": ["1","2","3","4","5","6","7","8","9"]}""", "input")]
    [InlineData("""{"model": "minilm", "input": "x", "input_type": "passage"}""", "input_type")]
    [InlineData("""not json""", "body")]
    [InlineData("""[1, 2]""", "body")]
    public async Task Bad_embedding_requests_get_400_naming_the_field(string json, string field)
    {
        var (status, body) = await Post("/v1/embeddings", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(field, body.GetProperty("error").GetProperty("param").GetString());
        Assert.False(string.IsNullOrEmpty(body.GetProperty("error").GetProperty("message").GetString()));
    }

    [Fact]
    public async Task Overlong_input_is_refused()
    {
        var (status, body) = await Post("/v1/embeddings", JsonSerializer.Serialize(new { model = "minilm", input = new string('a', 2001) }));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("input", body.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("2000", body.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Search_routes_and_returns_k_documents_of_the_collection()
    {
        var (status, body) = await Post("/v1/search", """{"collection": "mini", "query": "the crystalline lens in vertebrates", "k": 5}""");
        Assert.True(status == HttpStatusCode.OK, body.ToString());
        Assert.True(body.GetProperty("routed").GetBoolean());
        // The served default is the evaluation's best router, which mixes both experts' lists by its weights.
        Assert.Equal("weighted-fusion", body.GetProperty("router_name").GetString());
        Assert.Equal(1.0, body.GetProperty("router_weights").EnumerateObject().Sum(p => p.Value.GetDouble()), 4);
        var hits = body.GetProperty("hits").EnumerateArray().ToList();
        Assert.Equal(5, hits.Count);
        Assert.All(hits, h => Assert.True(silo.Collection.IndexOf(h.GetProperty("id").GetString()!) >= 0));
        var scores = hits.Select(h => h.GetProperty("score").GetSingle()).ToList();
        Assert.Equal(scores.OrderByDescending(s => s), scores);

        var (chosen, byDomain) = await Post("/v1/search", """{"collection": "mini", "query": "the crystalline lens in vertebrates", "k": 5, "router": "domain-pilots"}""");
        Assert.Equal(HttpStatusCode.OK, chosen);
        Assert.Equal("domain-pilots", byDomain.GetProperty("router_name").GetString());
        Assert.Contains(byDomain.GetProperty("expert").GetString(), new[] { "bm25", "minilm" });

        var (given, byBm25) = await Post("/v1/search", """{"collection": "mini", "query": "crystalline lens", "k": 3, "expert": "bm25"}""");
        Assert.Equal(HttpStatusCode.OK, given);
        Assert.False(byBm25.GetProperty("routed").GetBoolean());
        Assert.Equal("bm25", byBm25.GetProperty("expert").GetString());
        var top = (byBm25.GetProperty("hits")[0].GetProperty("title").GetString() + " " + byBm25.GetProperty("hits")[0].GetProperty("text").GetString()).ToLowerInvariant();
        Assert.True(top.Contains("lens", StringComparison.Ordinal) || top.Contains("crystalline", StringComparison.Ordinal), top);
    }

    [Theory]
    [InlineData("""{"query": "x"}""", "collection")]
    [InlineData("""{"collection": "no-such", "query": "x"}""", "collection")]
    [InlineData("""{"collection": "../etc", "query": "x"}""", "collection")]
    [InlineData("""{"collection": "mini"}""", "query")]
    [InlineData("""{"collection": "mini", "query": "  "}""", "query")]
    [InlineData("""{"collection": "mini", "query": "x", "k": 0}""", "k")]
    [InlineData("""{"collection": "mini", "query": "x", "k": 100000}""", "k")]
    [InlineData("""{"collection": "mini", "query": "x", "k": "ten"}""", "k")]
    [InlineData("""{"collection": "mini", "query": "x", "expert": "nope"}""", "expert")]
    [InlineData("""{"collection": "mini", "query": "x", "router": "best"}""", "router")]
    [InlineData("""{"collection": "mini", "query": "x", "router": 3}""", "router")]
    public async Task Bad_search_requests_get_400_naming_the_field(string json, string field)
    {
        var (status, body) = await Post("/v1/search", json);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal(field, body.GetProperty("error").GetProperty("param").GetString());
    }
}
