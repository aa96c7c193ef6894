using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Generation;
using MoeGrains.Plugins.Mixtral;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Model;

[Collection(LanguageModelClusterCollection.Name)]
public sealed class GenerationTests(LanguageModelClusterFixture fixture)
{
    private static readonly GenerationOptions Greedy = new() { MaxTokens = 24, Temperature = 0 };

    private static async Task<List<int>> Collect(DecoderStepAsync step, IReadOnlyList<int> prompt, GenerationOptions options, int context = 32)
    {
        var tokens = new List<int>();
        await foreach (var t in TextGeneration.GenerateAsync(step, prompt, options, context)) tokens.Add(t);
        return tokens;
    }

    private int[] Prompt() => TextTokenizers.FromMetadata(SafeTensorsFile.Open(fixture.CheckpointPath).Metadata).Encode("the lazy dog");

    [Fact]
    public async Task The_served_backbone_and_swiglu_experts_compute_the_plugin_models_logits()
    {
        var (file, configJson) = LanguageModelCheckpoint.Open(fixture.CheckpointPath);
        using var model = new MixtralForCausalLM(MixtralConfig.FromJson(configJson!));
        var weights = LanguageModelCheckpoint.LoadAll(file);
        model.LoadStateDict(weights);
        foreach (var t in weights.Values) t.Dispose();
        using var session = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm");
        var prompt = Prompt();
        var logits = await session.AppendAsync([.. prompt.Select(t => (long)t)]);
        using var _ = no_grad();
        var (expected, _) = model.forward(tensor(prompt.Select(t => (long)t).ToArray()).unsqueeze(0));
        using var last = expected[0, -1];
        using var actual = tensor(logits);
        Assert.True(actual.allclose(last, rtol: 1e-4, atol: 1e-5), $"max difference {(actual - last).abs().max().item<float>()}");
        Assert.Equal(prompt.Length, session.Position);
    }

    [Fact]
    public async Task Greedy_generation_across_two_silos_equals_in_process()
    {
        var prompt = Prompt();
        using var local = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm");
        var expected = await Collect(local.AppendAsync, prompt, Greedy);

        var grain = fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
        var silos = new HashSet<string>();
        var actual = await Collect(async (tokens, ct) =>
        {
            var step = await grain.Append(tokens, null, ct);
            silos.Add(step.Silo);
            return step.Logits;
        }, prompt, Greedy);
        await grain.Close();
        Assert.Equal(expected, actual);
        Assert.Equal(24, actual.Count);
        Assert.Equal(local.Position, 0L + prompt.Length + 23);
        Assert.All(local.ExpertSlots, slots => Assert.Equal(2 * local.Position, slots)); // top-2: two experts per token in every layer
        Assert.Single(silos); // the session (backbone and KV cache) stays where it started

        // The experts themselves are spread over both silos.
        var experts = await Task.WhenAll(Enumerable.Range(0, 6).Select(e => fixture.Cluster.GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Expert("lm", 0, e)).Describe()));
        Assert.Equal(2, experts.Select(e => e.Silo).Distinct().Count());
        Assert.All(experts, e => Assert.Equal("swiglu", e.Plugin));
    }

    [Fact]
    public async Task Concurrent_sessions_on_a_silo_share_one_backbone_and_each_keeps_its_own_KV_cache()
    {
        var tokenizer = TextTokenizers.FromMetadata(SafeTensorsFile.Open(fixture.CheckpointPath).Metadata);
        string[] texts = ["the lazy dog", "a quick fox", "dog"];
        var options = new GenerationOptions { MaxTokens = 10, Temperature = 0 };
        var expected = new List<List<int>>();
        long oneBackbone = 0;
        foreach (var text in texts)
        {
            using var local = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm");
            expected.Add(await Collect(local.AppendAsync, tokenizer.Encode(text), options));
            oneBackbone = local.Backbone.AllBytes;
        }
        // Three sessions at once, their steps interleaved on the silos.
        var grains = texts.Select(_ => fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")))).ToArray();
        var actual = await Task.WhenAll(texts.Select((text, i) => Collect(async (tokens, ct) => (await grains[i].Append(tokens, null, ct)).Logits, tokenizer.Encode(text), options)));
        Assert.Equal(expected, actual);
        // Each silo that serves sessions of the model holds one backbone copy, whatever the number of sessions.
        var perSilo = fixture.Cluster.Silos.Select(s => s.Services.GetRequiredService<SiloBackbones>().DeviceBytes()).ToArray();
        Assert.Contains(perSilo, b => b.ContainsKey("lm"));
        Assert.All(perSilo.Where(b => b.ContainsKey("lm")), b => Assert.Equal(oneBackbone, b["lm"]));
        foreach (var g in grains) await g.Close();
    }

    [Fact]
    public async Task Sampling_with_a_seed_is_reproducible_and_the_same_in_process_and_distributed()
    {
        var prompt = Prompt();
        var options = new GenerationOptions { MaxTokens = 12, Temperature = 1.0, TopP = 0.9, Seed = 42 };
        using var local = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm");
        var expected = await Collect(local.AppendAsync, prompt, options);
        var grain = fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
        var actual = await Collect(async (tokens, ct) => (await grain.Append(tokens, null, ct)).Logits, prompt, options);
        await grain.Close();
        Assert.Equal(expected, actual);
    }

    [Fact]
    public async Task Bad_generation_requests_are_clear_errors()
    {
        using var local = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm");
        DecoderStepAsync step = local.AppendAsync;
        async Task<string> Refused(IReadOnlyList<int> prompt, GenerationOptions options) =>
            (await Assert.ThrowsAsync<GenerationRequestException>(() => Collect(step, prompt, options))).Message;

        Assert.Contains("empty", await Refused([], Greedy));
        Assert.Contains("context holds 32", await Refused(Enumerable.Repeat(1, 33).ToArray(), Greedy));
        Assert.Contains("max tokens", await Refused([1], Greedy with { MaxTokens = GenerationOptions.MAX_NEW_TOKENS + 1 }));
        Assert.Contains("max tokens", await Refused([1], Greedy with { MaxTokens = 0 }));
        Assert.Contains("temperature", await Refused([1], Greedy with { Temperature = -0.5 }));
        Assert.Contains("temperature", await Refused([1], Greedy with { Temperature = double.NaN }));
        Assert.Contains("top-p", await Refused([1], Greedy with { TopP = 0 }));
        Assert.Contains("top-p", await Refused([1], Greedy with { TopP = 1.5 }));
        Assert.Equal(0, local.Position); // nothing was run

        // Through the cluster: an id outside the vocabulary and an unknown model are typed errors, and the session still serves.
        var grain = fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
        Assert.Contains("Token ids", (await Assert.ThrowsAsync<GenerationRequestException>(() => grain.Append([1, 9999]))).Message);
        Assert.Contains("prompt has 40", (await Assert.ThrowsAsync<GenerationRequestException>(() => grain.Append([.. Enumerable.Repeat(1L, 40)]))).Message);
        await Assert.ThrowsAsync<UnknownExpertException>(() => fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("nope", "s")).Append([1]));
        Assert.Equal(1, (await grain.Append([1])).Position);
        await grain.Close();
    }

    [Fact]
    public void Nucleus_sampling_keeps_the_smallest_set_reaching_top_p()
    {
        float[] logits = [(float)Math.Log(0.5), (float)Math.Log(0.3), (float)Math.Log(0.15), (float)Math.Log(0.05)];
        Assert.Equal(0, TokenSampler.ArgMax(logits));
        var sampler = new TokenSampler(1.0, 0.75, seed: 7);
        var drawn = Enumerable.Range(0, 2000).Select(_ => sampler.Next(logits)).ToArray();
        Assert.Equal(new[] { 0, 1 }, drawn.Distinct().Order().ToArray()); // 0.5 + 0.3 reaches 0.75
        Assert.InRange(drawn.Count(t => t == 0) / 2000.0, 0.56, 0.69); // 0.5 / 0.8
        var again = new TokenSampler(1.0, 0.75, seed: 7);
        Assert.Equal(drawn.Take(100), Enumerable.Range(0, 100).Select(_ => again.Next(logits)));
    }

    [Theory]
    [InlineData("topp", false)]
    [InlineData("capacity", false)]
    [InlineData(null, true)]
    public async Task Other_routings_and_self_contrast_decoding_give_the_same_tokens_across_two_silos(string? router, bool scmoe)
    {
        var prompt = Prompt();
        var options = Greedy with { MaxTokens = 12 };
        var contrast = new SelfContrastDecoding();
        var local = new List<DecoderSession>();
        DecoderStepAsync LocalSession(string? r)
        {
            var s = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm", r);
            local.Add(s);
            return s.AppendAsync;
        }
        var grains = new List<IDecoderSessionGrain>();
        DecoderStepAsync GrainSession(string? r)
        {
            var g = fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
            grains.Add(g);
            return async (tokens, ct) => (await g.Append(tokens, r, ct)).Logits;
        }
        try
        {
            var expected = await Collect(scmoe ? contrast.Step(LocalSession(router), LocalSession(contrast.WeakRouter)) : LocalSession(router), prompt, options);
            var actual = await Collect(scmoe ? contrast.Step(GrainSession(router), GrainSession(contrast.WeakRouter)) : GrainSession(router), prompt, options);
            Assert.Equal(expected, actual);
        }
        finally
        {
            foreach (var s in local) s.Dispose();
            foreach (var g in grains) await g.Close();
        }
    }

    [Fact]
    public async Task Routing_evaluation_measures_the_models_own_loss_and_experts_per_token()
    {
        var (file, configJson) = LanguageModelCheckpoint.Open(fixture.CheckpointPath);
        using var model = new MixtralForCausalLM(MixtralConfig.FromJson(configJson!));
        var weights = LanguageModelCheckpoint.LoadAll(file);
        model.LoadStateDict(weights);
        foreach (var t in weights.Values) t.Dispose();
        var ids = TextTokenizers.FromMetadata(file.Metadata).Encode(TinyLanguageModel.Corpus(2));
        var windows = RoutingEvaluation.Windows(ids, 32, 3);
        var evaluation = new RoutingEvaluation(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services);

        var (loss, layers) = await evaluation.HeldOutAsync(null, windows);
        using var x = tensor(windows.SelectMany(w => w.Take(31)).Select(t => (long)t).ToArray(), [3, 31]);
        using var y = tensor(windows.SelectMany(w => w.Skip(1)).Select(t => (long)t).ToArray(), [3, 31]);
        using var expected = model.Loss(x, y);
        Assert.Equal(expected.LanguageModel.item<float>(), loss!.Value, 3);
        Assert.All(layers, e => Assert.Equal(2.0, e, 6));

        var (_, rank) = await evaluation.HeldOutAsync("rank", windows);
        Assert.All(rank, e => Assert.Equal(1.0, e, 6));
    }

    [Fact]
    public async Task An_unknown_router_is_a_clear_error()
    {
        var grain = fixture.Cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
        var error = await Assert.ThrowsAnyAsync<Exception>(() => grain.Append([1, 2], "no-such-router"));
        Assert.Contains("no-such-router", error.Message);
        await grain.Close();
        using var local = DecoderSession.InProcess(TinyModelPlugins(), fixture.CheckpointPath, TinyModel.Services, "lm", "no-such-router");
        Assert.Contains("no-such-router", (await Assert.ThrowsAsync<UnknownExpertException>(() => local.AppendAsync([1, 2]))).Message);
    }

    private static global::MoeGrains.Plugins.PluginCatalog TinyModelPlugins() => TinyModel.BuiltIn();
}
