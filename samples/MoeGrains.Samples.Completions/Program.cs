using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

// Streams a completion from a MoeGrains silo host: POST /v1/completions with "stream": true, then prints each
// server-sent event's text as it arrives. Usage:
//   dotnet run --project samples/MoeGrains.Samples.Completions -- "ROMEO:" [--url http://127.0.0.1:8080] [--model lm]
//       [--max-tokens 200] [--temperature 0.8] [--top-p 0.95] [--seed 1] [--router topp]
string? Option(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();
var prompt = args.FirstOrDefault(a => !a.StartsWith("--", StringComparison.Ordinal) && Array.IndexOf(args, a) is var i && (i == 0 || !args[i - 1].StartsWith("--", StringComparison.Ordinal))) ?? "ROMEO:";
var url = Option("--url") ?? "http://127.0.0.1:8080";
var body = new JsonObject
{
    ["prompt"] = prompt,
    ["max_tokens"] = int.Parse(Option("--max-tokens") ?? "200", System.Globalization.CultureInfo.InvariantCulture),
    ["temperature"] = double.Parse(Option("--temperature") ?? "0.8", System.Globalization.CultureInfo.InvariantCulture),
    ["top_p"] = double.Parse(Option("--top-p") ?? "0.95", System.Globalization.CultureInfo.InvariantCulture),
    ["seed"] = long.Parse(Option("--seed") ?? "1", System.Globalization.CultureInfo.InvariantCulture),
    ["stream"] = true,
};
if (Option("--model") is { } model) body["model"] = model; // the silo's only model when left out
if (Option("--router") is { } router) body["router"] = router;

using var http = new HttpClient { BaseAddress = new Uri(url), Timeout = Timeout.InfiniteTimeSpan };
using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
var sw = Stopwatch.StartNew();
using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
if (!response.IsSuccessStatusCode)
{
    // Errors are {"error": {"message", "type", "param"}}: param names the request field that was wrong.
    var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())?["error"];
    Console.Error.WriteLine($"{(int)response.StatusCode}: {error?["param"]}: {error?["message"]}");
    return 1;
}

Console.Write(prompt);
using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
TimeSpan? first = null;
var tokens = 0;
while (await reader.ReadLineAsync() is { } line)
{
    if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue; // blank lines separate events
    var data = line["data: ".Length..];
    if (data == "[DONE]") break;
    var chunk = JsonNode.Parse(data)!;
    var choice = chunk["choices"]![0]!;
    Console.Write(choice["text"]?.GetValue<string>());
    if (choice["finish_reason"] is { } finish)
    {
        Console.WriteLine();
        var usage = chunk["usage"];
        Console.Error.WriteLine($"[finish: {finish}; {usage?["completion_tokens"]} tokens in {sw.Elapsed.TotalSeconds:F1} s, first after {first?.TotalMilliseconds:F0} ms; " +
            $"backbone on {chunk["moegrains"]?["silo"]}{(chunk["error"] is { } e ? $"; error: {e["message"]}" : "")}]");
    }
    else
    {
        first ??= sw.Elapsed;
        tokens++;
    }
}
return 0;
