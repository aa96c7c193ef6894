using MoeGrains.Training;
using CsCheck;
using MoeGrains.Checkpoints;
using MoeGrains.Dispatch;
using MoeGrains.Generation;
using MoeGrains.Models;
using MoeGrains.Plugins;
using MoeGrains.Plugins.Mixtral;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Model;

/// <summary>The routing policies that need training (top-p, AdaMoE, THOR): their router plugins, losses and serving.</summary>
public sealed class TrainedRoutingTests
{
    private const int DModel = 16;
    private static readonly PluginCatalog Catalog = TinyModel.BuiltIn();

    private static IRouter Router(string name, int experts, int k, long seed, int nulls = 8) => Catalog.Create<IRouter>(name, PluginKind.Router, new PluginContext
    {
        Id = $"test/0/{name}",
        Device = CPU,
        Seed = seed,
        Settings = new Dictionary<string, string>
        {
            ["hidden_size"] = $"{DModel}", ["num_local_experts"] = $"{experts}", ["num_experts_per_tok"] = $"{k}", ["num_null_experts"] = $"{nulls}",
        },
    }, TinyModel.Services);

    [Fact]
    public void Adamoe_and_thor_routers_keep_their_invariants_on_random_batches()
    {
        var gen = Gen.Select(Gen.Int[1, 8], Gen.Int[1, 6], Gen.Int[1, 30], Gen.Bool.Array[8], Gen.Int[0, 1000], Gen.Int[1, 12]);
        gen.Sample((experts, k, tokens, maskBits, seed, nulls) =>
        {
            var mask = maskBits.Take(experts).ToArray();
            if (!mask.Any(m => m)) mask[seed % experts] = true;
            k = Math.Min(k, experts + nulls);
            using var scope = NewDisposeScope();
            var hidden = randn(new long[] { tokens, DModel }, generator: new Generator((ulong)seed)).mul(2);
            foreach (var name in new[] { "adamoe", "thor", "thor-seq" })
            {
                using var router = Router(name, experts, k, seed, nulls);
                var routing = Routing.Route(router, hidden, new ExpertAvailability(mask));
                for (var t = 0; t < tokens; t++)
                {
                    var row = routing.Experts.Skip(t * routing.K).Take(routing.K).ToArray();
                    var w = routing.Weights.Skip(t * routing.K).Take(routing.K).ToArray();
                    var real = row.Where(e => e >= 0).ToArray();
                    Assert.All(real, e => Assert.True(e < experts && mask[e], $"{name} chose {e}, not an available true expert"));
                    Assert.Equal(real.Length, real.Distinct().Count());
                    Assert.All(w, x => Assert.True(x >= 0 && float.IsFinite(x)));
                    for (var j = 0; j < row.Length; j++) if (row[j] < 0) Assert.Equal(0f, w[j]);
                    if (name == "adamoe")
                    {
                        Assert.Equal(k, routing.K);
                        // The true experts' weights sum to one, or the token chose only null experts and computes nothing.
                        Assert.True(real.Length == 0 ? w.Sum() == 0 : Math.Abs(w.Sum() - 1) < 1e-5, $"weights sum to {w.Sum()}");
                    }
                    else
                    {
                        Assert.Single(real);
                        Assert.Equal(1f, w.Single());
                    }
                }
                if (name == "thor-seq")
                {
                    Assert.Single(routing.Experts.Distinct()); // one expert for the whole sequence
                }
            }
        }, iter: 60);
    }

    [Fact]
    public void Thor_per_token_draws_spread_over_the_experts_and_per_sequence_draws_differ_between_sessions()
    {
        using var hidden = randn(400, DModel);
        var all = Enumerable.Repeat(true, 8).ToArray();
        using var perToken = Router("thor", 8, 1, 3);
        var counts = Routing.Route(perToken, hidden, new ExpertAvailability(all)).Experts.GroupBy(e => e).ToDictionary(g => g.Key, g => g.Count());
        Assert.Equal(8, counts.Count);
        Assert.All(counts.Values, c => Assert.InRange(c, 20, 80)); // 50 expected each
        var sequences = Enumerable.Range(0, 12).Select(_ =>
        {
            using var r = Router("thor-seq", 8, 1, 3);
            return Routing.Route(r, hidden, new ExpertAvailability(all)).Experts[0];
        }).Distinct().Count();
        Assert.True(sequences > 1, "every sequence drew the same expert");
    }

    [Fact]
    public async Task Null_experts_are_never_dispatched_and_tokens_that_choose_them_compute_less()
    {
        const int experts = 4, k = 3, tokens = 64;
        using var router = Router("adamoe", experts, k, 11, nulls: 8);
        using var hidden = randn(new long[] { tokens, DModel }, generator: new Generator(4));
        var routing = Routing.Route(router, hidden, new ExpertAvailability(Enumerable.Repeat(true, experts).ToArray()));
        var calls = new List<(int Expert, long Tokens)>();
        using var output = await MoeLayerRunner.RunAsync(hidden, routing, experts, DModel, (e, batch, _) =>
        {
            lock (calls) calls.Add((e, batch.shape[0]));
            return Task.FromResult(new ExpertAnswer(batch.clone(), "local", 0, 0));
        }, 1, TimeSpan.FromSeconds(30));
        var trueSlots = routing.Experts.Count(e => e >= 0);
        Assert.All(calls, c => Assert.InRange(c.Expert, 0, experts - 1));
        Assert.True(calls.Count <= experts, "one call per chosen expert at most");
        Assert.Equal(trueSlots, calls.Sum(c => c.Tokens)); // nothing was sent for a null slot
        Assert.True(trueSlots < tokens * k, "no token chose a null expert: the test shows nothing");
        // A token whose slots were all null experts gets exactly zero from the layer.
        for (var t = 0; t < tokens; t++)
        {
            if (routing.Experts.Skip(t * k).Take(k).All(e => e < 0)) Assert.Equal(0f, output.Output[t].abs().sum().item<float>());
        }
    }

    private static (MixtralForCausalLM Model, CharTokenizer Tokenizer, Tensor X, Tensor Y) Tiny(string policy, long seed = 3, double alpha = 1.0)
    {
        var tokenizer = CharTokenizer.FromText(TinyLanguageModel.Corpus(1));
        var config = TinyLanguageModel.Config(tokenizer.VocabSize) with
        {
            RouterPolicy = policy,
            NumNullExperts = policy == RoutingPolicies.AdaMoE ? 4 : 0,
            NumExpertsPerTok = policy == RoutingPolicies.AdaMoE ? 3 : 2,
            ThorConsistencyAlpha = alpha,
            TopPThreshold = 0.5,
            RouterEntropyLossCoef = 0.01,
        };
        var model = new MixtralForCausalLM(config.EnsureValid(), seed);
        model.ReseedRouting((int)seed);
        var corpus = new TokenCorpus(tokenizer.Encode(TinyLanguageModel.Corpus(4)), 0.1);
        var (x, y) = corpus.TrainingBatch(0, 4, 24, seed);
        return (model, tokenizer, x, y);
    }

    [Theory]
    [InlineData("topk")]
    [InlineData("topp")]
    [InlineData("adamoe")]
    [InlineData("thor")]
    public void Training_steps_lower_the_loss_on_a_tiny_corpus(string policy)
    {
        var (model, _, x, y) = Tiny(policy);
        using (model)
        using (x)
        using (y)
        {
            using var optimizer = new AdamW([.. model.named_parameters().Select(p => (p.name, p.parameter))], 0.9, 0.99, 0.0);
            model.train();
            double first = 0, last = 0;
            for (var step = 0; step < 12; step++)
            {
                using var scope = NewDisposeScope();
                var loss = model.Loss(x, y);
                Assert.True(float.IsFinite(loss.Total.item<float>()), $"{policy}: non-finite loss");
                if (step == 0) first = loss.LanguageModel.item<float>();
                last = loss.LanguageModel.item<float>();
                loss.Total.backward();
                optimizer.Step(1e-2);
                model.zero_grad();
            }
            Assert.True(last < first - 0.3, $"{policy}: loss {first:F3} → {last:F3}");
        }
    }

    [Fact]
    public void Top_p_and_adamoe_auxiliary_losses_are_the_papers_forms()
    {
        // Two tokens, 2 true + 2 null experts; token 0 chose columns 0 and 2 (a null), token 1 columns 1 and 3.
        using var logits = tensor(new float[] { 2, 0, 1, 0, 0, 2, 0, 1 }, [2, 4]);
        using var chosen = tensor(new long[] { 0, 2, 1, 3 }, [2, 2]);
        var routing = new[] { new MoeRouting(logits.alias(), chosen.alias()) };
        using var p = nn.functional.softmax(logits, 1);
        var meanP = p.mean([0]).data<float>().ToArray();
        // Group balance: the null experts' counts (1 and 1) are replaced by their mean (1): 4 · Σ (c_i / 2) · P_i.
        var expected = 4 * (0.5 * meanP[0] + 0.5 * meanP[1] + 0.5 * meanP[2] + 0.5 * meanP[3]);
        Assert.Equal(expected, RoutingLosses.Balance(routing, 2, 2).item<float>(), 4);
        var entropy = -p.mul(p.log()).sum(1).mean().item<float>();
        Assert.Equal(entropy, RoutingLosses.Entropy(routing).item<float>(), 4);
        using var a = tensor(new float[] { 1, 0, 0 }, [1, 3]);
        using var b = tensor(new float[] { 0, 1, 0 }, [1, 3]);
        using var pa = nn.functional.softmax(a, 1);
        using var pb = nn.functional.softmax(b, 1);
        var skl = 0.5 * pa.sub(pb).mul(pa.log().sub(pb.log())).sum().item<float>();
        Assert.Equal(skl, RoutingLosses.SymmetricKl(a, b).item<float>(), 5);
        foreach (var r in routing) r.Dispose();
    }

    [Fact]
    public void Thor_consistency_loss_lowers_the_disagreement_between_random_routes()
    {
        double Train(double alpha)
        {
            var (model, _, x, y) = Tiny(RoutingPolicies.Thor, seed: 8, alpha: alpha);
            using (model)
            using (x)
            using (y)
            {
                using var optimizer = new AdamW([.. model.named_parameters().Select(p => (p.name, p.parameter))], 0.9, 0.99, 0.0);
                model.train();
                for (var step = 0; step < 25; step++)
                {
                    using var scope = NewDisposeScope();
                    var loss = model.Loss(x, y);
                    loss.Total.backward();
                    optimizer.Step(5e-3);
                    model.zero_grad();
                }
                model.eval(); // a random expert per token: many routes at once
                model.ReseedRouting(99);
                return Enumerable.Range(0, 6).Average(_ => model.RouteDisagreement(x));
            }
        }
        var without = Train(0);
        var with = Train(10);
        Assert.True(with < 0.7 * without, $"disagreement with the consistency loss {with:F4}, without {without:F4}");
    }

    [Theory]
    [InlineData("topp", "topp")]
    [InlineData("adamoe", "adamoe")]
    public async Task A_checkpoint_names_its_policys_router_and_serving_it_reproduces_the_trained_modules_logits(string policy, string router)
    {
        var folder = Path.Combine(Path.GetTempPath(), "moegrains-tests", $"policy-{policy}-{Guid.NewGuid():N}");
        var (model, tokenizer, x, y) = Tiny(policy, seed: 21);
        using (model)
        using (x)
        using (y)
        {
            LanguageModelCheckpoint.Save(folder, model.StateDict(), model.Config.ToJson(), MixtralCheckpointMetadata.Create(model.Config, tokenizer));
            var path = LanguageModelCheckpoint.WeightsPath(folder);
            Assert.Equal(router, SafeTensorsFile.Open(path).Metadata[ModelSpec.RouterPluginKey]);
            var ids = tokenizer.Encode("the lazy dog jumps");
            using var session = DecoderSession.InProcess(Catalog, path, TinyModel.Services, "lm");
            var logits = await session.AppendAllAsync([.. ids.Select(t => (long)t)]);
            model.eval();
            using var _ = no_grad();
            var (expected, routing) = model.forward(tensor(ids.Select(t => (long)t).ToArray()).unsqueeze(0));
            using var actual = tensor(logits.SelectMany(l => l).ToArray(), [ids.Length, logits[0].Length]);
            Assert.True(actual.allclose(expected[0], rtol: 1e-4, atol: 1e-4), $"max difference {(actual - expected[0]).abs().max().item<float>()}");
            // Experts computed per token, as served, match the module's routing (null and dropped slots cost nothing).
            var moduleSlots = routing.Sum(r => r.Chosen.ge(0).logical_and(r.Chosen.lt(model.Config.NumLocalExperts)).sum().item<long>());
            Assert.Equal(moduleSlots, session.ExpertSlots.Sum());
            Assert.Equal(moduleSlots, session.TokenExperts.Sum());
            foreach (var r in routing) r.Dispose();
        }
    }

    [Fact]
    public void Babi_stories_become_items_whose_question_positions_predict_the_answers()
    {
        // The shared data folder, found the way the placement tests find it.
        var folder = Path.GetDirectoryName(Path.GetDirectoryName(Placement.PlacementData.File("qa", "babi", "en", "qa1_single-supporting-fact_test.txt")))!;
        var stories = BabiTasks.Load(BabiTasks.File(folder, "qa1", "test"), "qa1");
        Assert.Equal(1000, stories.Sum(s => s.Questions.Length));
        var tokenizer = WordTokenizer.FromText(BabiTasks.Text(stories));
        var item = BabiItem.From(stories[0], tokenizer.Encode);
        Assert.Equal(tokenizer.Encode(BabiTasks.Text([stories[0]]).TrimEnd('\n') + "\n"), item.Tokens);
        foreach (var (pos, answer) in item.Questions)
        {
            Assert.Equal("?", tokenizer.Decode([item.Tokens[pos]]));
            Assert.Equal(answer, item.Tokens[(pos + 1)..(pos + 1 + answer.Length)]);
        }
        Assert.Equal("hallway", tokenizer.Decode(item.Questions[0].Answer)); // "Where is John? hallway" in qa1 test story 1
        Assert.Throws<ArgumentException>(() => BabiTasks.File(folder, "qa21", "test"));
        Assert.Equal("where is mary? bathroom\nmary moved.", tokenizer.Decode(tokenizer.Encode("where is mary? bathroom\nmary moved.")));
    }
}
