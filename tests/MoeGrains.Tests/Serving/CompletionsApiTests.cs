using System.Net;
using System.Text;
using System.Text.Json;
using MoeGrains.Checkpoints;
using MoeGrains.Generation;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Serving;

/// <summary><c>POST /v1/completions</c> on a real silo host process, with a real HttpClient.</summary>
public sealed class CompletionsApiTests(SiloHostProcess silo) : IClassFixture<SiloHostProcess>
{
    private const string Prompt = "the lazy dog";

    private ITextTokenizer Tokenizer => TextTokenizers.FromMetadata(SafeTensorsFile.Open(silo.CheckpointPath).Metadata);

    private async Task<List<int>> InProcessGreedy(int maxTokens)
    {
        using var local = DecoderSession.InProcess(TinyModel.BuiltIn(), silo.CheckpointPath, TinyModel.Services, "lm");
        var tokens = new List<int>();
        await foreach (var t in TextGeneration.GenerateAsync(local.AppendAsync, Tokenizer.Encode(Prompt), new GenerationOptions { MaxTokens = maxTokens, Temperature = 0 }, 32))
        {
            tokens.Add(t);
        }
        return tokens;
    }

    private Task<HttpResponseMessage> Post(string json) =>
        silo.Http.PostAsync("/v1/completions", new StringContent(json, Encoding.UTF8, "application/json"));

    [Fact]
    public async Task A_completion_is_one_json_object_with_the_in_process_greedy_tokens()
    {
        var expected = await InProcessGreedy(10);
        using var response = await Post($$"""{"model": "lm", "prompt": "{{Prompt}}", "max_tokens": 10, "temperature": 0, "seed": 3}""");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var root = json.RootElement;
        Assert.Equal("text_completion", root.GetProperty("object").GetString());
        Assert.Equal("lm", root.GetProperty("model").GetString());
        var choice = root.GetProperty("choices")[0];
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        var ids = choice.GetProperty("token_ids").EnumerateArray().Select(t => t.GetInt32()).ToList();
        Assert.Equal(expected, ids);
        Assert.Equal(Tokenizer.Decode(expected), choice.GetProperty("text").GetString());
        Assert.Equal(Prompt.Length, root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(10, root.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Fact]
    public async Task A_self_contrast_completion_has_the_in_process_scmoe_tokens()
    {
        var contrast = new SelfContrastDecoding(0.2, 0.7) { WeakRank = 2 };
        using var strong = DecoderSession.InProcess(TinyModel.BuiltIn(), silo.CheckpointPath, TinyModel.Services, "lm");
        using var weak = DecoderSession.InProcess(TinyModel.BuiltIn(), silo.CheckpointPath, TinyModel.Services, "lm", contrast.WeakRouter);
        var expected = new List<int>();
        await foreach (var t in TextGeneration.GenerateAsync(contrast.Step(strong.AppendAsync, weak.AppendAsync), Tokenizer.Encode(Prompt),
            new GenerationOptions { MaxTokens = 8, Temperature = 0 }, 32))
        {
            expected.Add(t);
        }
        using var response = await Post($$$"""{"model": "lm", "prompt": "{{{Prompt}}}", "max_tokens": 8, "temperature": 0, "scmoe": {"alpha": 0.2, "beta": 0.7, "weak_rank": 2} }""");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var ids = json.RootElement.GetProperty("choices")[0].GetProperty("token_ids").EnumerateArray().Select(t => t.GetInt32()).ToList();
        Assert.Equal(expected, ids);
        Assert.True(json.RootElement.GetProperty("moegrains").GetProperty("scmoe").GetBoolean());
    }

    [Fact]
    public async Task Streaming_sends_one_event_per_token_in_order_then_the_finish_reason_then_done()
    {
        var expected = await InProcessGreedy(12);
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent($$"""{"model": "lm", "prompt": ["{{Prompt}}"], "max_tokens": 12, "temperature": 0, "stream": true, "router": "topk"}""", Encoding.UTF8, "application/json"),
        };
        using var response = await silo.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var data = new List<string>();
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("data: ", StringComparison.Ordinal)) data.Add(line["data: ".Length..]);
            else Assert.Equal("", line); // events are separated by blank lines
        }
        Assert.Equal("[DONE]", data[^1]);
        Assert.Single(data, d => d == "[DONE]");
        var chunks = data[..^1].Select(d => JsonDocument.Parse(d).RootElement).ToList();
        Assert.Equal(13, chunks.Count); // 12 tokens, then the end
        Assert.Equal(Enumerable.Range(0, 13).Select(i => (long)i), chunks.Select(c => c.GetProperty("sequence").GetInt64()));
        var tokens = chunks[..^1].Select(c => c.GetProperty("choices")[0].GetProperty("token_id").GetInt32()).ToList();
        Assert.Equal(expected, tokens);
        Assert.All(chunks[..^1], c => Assert.Equal(JsonValueKind.Null, c.GetProperty("choices")[0].GetProperty("finish_reason").ValueKind));
        Assert.Equal("length", chunks[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(Tokenizer.Decode(expected), string.Concat(chunks.Select(c => c.GetProperty("choices")[0].GetProperty("text").GetString())));
        Assert.Equal(12, chunks[^1].GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [Theory]
    [InlineData("""{"model": "lm", "prompt": ""}""", "prompt")]
    [InlineData("""{"model": "lm"}""", "prompt")]
    [InlineData("""{"model": "lm", "prompt": 12}""", "prompt")]
    [InlineData("""{"model": "lm", "prompt": "the lazy dog the lazy dog the lazy dog"}""", "prompt")] // 38 tokens, context 32
    [InlineData("""{"model": "lm", "prompt": "€uro"}""", "prompt")]
    [InlineData("""{"model": "gpt-4", "prompt": "the"}""", "model")]
    [InlineData("""{"model": "lm", "prompt": "the", "router": "no-such-policy"}""", "router")]
    [InlineData("""{"model": "lm", "prompt": "the", "policy": "no-such-policy"}""", "policy")]
    [InlineData("""{"model": "lm", "prompt": "the", "max_tokens": 0}""", "max_tokens")]
    [InlineData("""{"model": "lm", "prompt": "the", "max_tokens": 4097}""", "max_tokens")]
    [InlineData("""{"model": "lm", "prompt": "the", "max_tokens": "ten"}""", "max_tokens")]
    [InlineData("""{"model": "lm", "prompt": "the", "temperature": "NaN"}""", "temperature")]
    [InlineData("""{"model": "lm", "prompt": "the", "temperature": -0.1}""", "temperature")]
    [InlineData("""{"model": "lm", "prompt": "the", "temperature": 1e300}""", "temperature")]
    [InlineData("""{"model": "lm", "prompt": "the", "top_p": 0}""", "top_p")]
    [InlineData("""{"model": "lm", "prompt": "the", "top_p": 1.01}""", "top_p")]
    [InlineData("""{"model": "lm", "prompt": "the", "top_p": "NaN"}""", "top_p")]
    [InlineData("""{"model": "lm", "prompt": "the", "stream": "yes"}""", "stream")]
    [InlineData("""{"model": "lm", "prompt": "the", "seed": 1.5}""", "seed")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": "yes"}""", "scmoe")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"alpha": 0}}""", "scmoe.alpha")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"alpha": 1.5}}""", "scmoe.alpha")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"beta": -1}}""", "scmoe.beta")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"beta": "NaN"}}""", "scmoe.beta")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"weak_rank": -1}}""", "scmoe.weak_rank")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"weak_rank": 99}}""", "scmoe.weak_rank")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"weak_rank": 1.5}}""", "scmoe.weak_rank")]
    [InlineData("""{"model": "lm", "prompt": "the", "scmoe": {"gamma": 1}}""", "scmoe.gamma")]
    [InlineData("""{"model": "lm", "prompt": """, "body")]
    [InlineData("""[1, 2]""", "body")]
    [InlineData("", "body")]
    public async Task A_bad_request_is_a_400_naming_the_field(string body, string field)
    {
        using var response = await Post(body);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var error = json.RootElement.GetProperty("error");
        Assert.Equal(field, error.GetProperty("param").GetString());
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        Assert.False(string.IsNullOrWhiteSpace(error.GetProperty("message").GetString()));
    }

    [Fact]
    public async Task A_body_over_the_limit_is_refused_and_the_silo_still_serves()
    {
        var huge = new string('a', 2 << 20);
        using var response = await Post($$"""{"model": "lm", "prompt": "{{huge}}"}""");
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Contains("\"param\":\"body\"", await response.Content.ReadAsStringAsync());
        using var ok = await Post("""{"prompt": "the", "max_tokens": 2}"""); // one model served: it is the default
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        Assert.True((await silo.Http.GetAsync("/health/live")).IsSuccessStatusCode);
    }
}
