using System.Net.Http.Json;
using System.Text.Json;

// A semantic-search client of a MoeGrains silo's HTTP API, with nothing but HttpClient:
//  1. POST /v1/embeddings: embeds a few sentences and prints which pairs are closest (cosine similarity);
//  2. POST /v1/search: searches a collection, letting the router pick the expert, then with an expert named.
// Usage: dotnet run -- [--url http://127.0.0.1:8080] [--collection med] [--model minilm] [query]
var url = "http://127.0.0.1:8080";
var collection = "med";
var model = "minilm";
var query = "the crystalline lens in vertebrates, including humans";
for (var i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--url" when i + 1 < args.Length: url = args[++i]; break;
        case "--collection" when i + 1 < args.Length: collection = args[++i]; break;
        case "--model" when i + 1 < args.Length: model = args[++i]; break;
        default: query = args[i]; break;
    }
}

using var http = new HttpClient { BaseAddress = new Uri(url), Timeout = TimeSpan.FromMinutes(30) };

// 1. Embeddings: which sentences mean the same thing?
string[] sentences =
[
    "blood pressure in children with heart disease",
    "hypertension in young cardiac patients",
    "automatic indexing of library catalogues",
    "computers that classify documents in libraries",
];
var embedded = await Post(http, "/v1/embeddings", new { model, input = sentences });
var vectors = embedded.GetProperty("data").EnumerateArray()
    .Select(d => d.GetProperty("embedding").EnumerateArray().Select(v => v.GetSingle()).ToArray()).ToArray();
Console.WriteLine($"{model}: {vectors.Length} embeddings of {vectors[0].Length} dimensions");
for (var a = 0; a < sentences.Length; a++)
{
    var best = Enumerable.Range(0, sentences.Length).Where(b => b != a).MaxBy(b => Cosine(vectors[a], vectors[b]));
    Console.WriteLine($"  \"{sentences[a]}\"\n    closest: \"{sentences[best]}\" (cosine {Cosine(vectors[a], vectors[best]):F3})");
}

// 2. Search, routed by the pilot-embedding router, then with each expert the router weighed.
var routed = await Post(http, "/v1/search", new { collection, query, k = 5 });
Print(routed);
foreach (var expert in routed.GetProperty("router").EnumerateObject().Select(p => p.Name).Where(e => e != routed.GetProperty("expert").GetString()))
{
    Print(await Post(http, "/v1/search", new { collection, query, k = 5, expert }));
}
return 0;

static async Task<JsonElement> Post(HttpClient http, string path, object body)
{
    using var response = await http.PostAsJsonAsync(path, body);
    var json = await response.Content.ReadFromJsonAsync<JsonElement>();
    if (!response.IsSuccessStatusCode)
    {
        var error = json.GetProperty("error");
        throw new InvalidOperationException($"{path}: {(int)response.StatusCode} {error.GetProperty("param")}: {error.GetProperty("message")}");
    }
    return json;
}

static double Cosine(float[] a, float[] b) =>
    a.Zip(b).Sum(p => (double)p.First * p.Second) / Math.Sqrt(a.Sum(x => (double)x * x) * b.Sum(x => (double)x * x));

static void Print(JsonElement result)
{
    var how = result.GetProperty("routed").GetBoolean()
        ? "routed to " + result.GetProperty("expert").GetString() + " (" + string.Join(", ", result.GetProperty("router").EnumerateObject().Select(p => $"{p.Name} {p.Value}")) + ")"
        : "expert " + result.GetProperty("expert").GetString();
    Console.WriteLine($"\n{result.GetProperty("collection").GetString()}: {how}");
    foreach (var hit in result.GetProperty("hits").EnumerateArray())
    {
        var text = (hit.GetProperty("title").GetString() + " " + hit.GetProperty("text").GetString()).Trim();
        Console.WriteLine($"  {hit.GetProperty("rank").GetInt32(),2}. {hit.GetProperty("id").GetString(),-6} {hit.GetProperty("score").GetSingle(),8:F3}  {string.Join(' ', text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Take(12))} ...");
    }
}
