using MoeGrains.Generation;
using MoeGrains.Plugins;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Model;

public sealed class RoutingPolicyTests
{
    private const int DModel = 16;
    private const int Experts = 8;

    private static IRouter Router(string name, long seed)
    {
        // A name may carry settings for the instance (RouterNames), as the runtime creates them.
        var (plugin, extra) = RouterNames.Parse(name);
        var settings = new Dictionary<string, string> { ["hidden_size"] = $"{DModel}", ["num_local_experts"] = $"{Experts}", ["num_experts_per_tok"] = "2" };
        foreach (var (k, v) in extra) settings[k] = v;
        return TinyModel.BuiltIn().Create<IRouter>(plugin, PluginKind.Router, new PluginContext
        {
            Id = $"test/0/{plugin}",
            Device = CPU,
            Seed = seed,
            Settings = settings,
        }, TinyModel.Services);
    }

    [Fact]
    public void A_per_sequence_router_draws_one_expert_per_sequence_seed_wherever_it_is_created()
    {
        var plugins = TinyModel.BuiltIn();
        Assert.True(plugins.Get("thor-seq", PluginKind.Router).PerSequence);
        Assert.False(plugins.Get("thor", PluginKind.Router).PerSequence);
        Assert.Null(RouterNames.ForSequence(null, "topk", plugins, 5)); // the model's own router is not per sequence
        Assert.Equal("thor", RouterNames.ForSequence("thor", "topk", plugins, 5));
        Assert.Equal("thor-seq?sequence_seed=5", RouterNames.ForSequence(null, "thor-seq", plugins, 5));
        Assert.Equal(("rank", "3"), (RouterNames.Parse("rank?rank_k=3").Plugin, RouterNames.Parse("rank?rank_k=3").Settings["rank_k"]));
        Assert.Throws<ArgumentException>(() => RouterNames.Parse("rank?rank_k"));

        long Draw(long sequenceSeed)
        {
            using var router = Router(RouterNames.ForSequence("thor-seq", "topk", plugins, sequenceSeed)!, 11);
            using var hidden = randn(new long[] { 30, DModel }, generator: new Generator(3));
            var (experts, weights, k) = Route(router, hidden, Enumerable.Repeat(true, Experts).ToArray());
            Assert.Equal(1, k);
            Assert.All(weights, w => Assert.Equal(1f, w));
            return Assert.Single(experts.Distinct()); // one expert for the whole sequence
        }
        var draws = Enumerable.Range(0, 16).Select(s => Draw(s)).ToArray();
        Assert.Equal(draws, Enumerable.Range(0, 16).Select(s => Draw(s))); // the same seed draws the same expert, in a new instance
        Assert.True(draws.Distinct().Count() >= 4, $"16 sequences drew only {draws.Distinct().Count()} distinct experts");
    }

    private static (long[] Experts, float[] Weights, int K) Route(IRouter router, Tensor hidden, bool[] available)
    {
        using var d = router.Route(hidden, new ExpertAvailability(available));
        return (d.Experts.data<long>().ToArray(), d.Weights.data<float>().ToArray(), (int)d.K);
    }

    public static TheoryData<string> Policies => new() { "topk", "topp", "rank", "capacity" };

    [Theory]
    [MemberData(nameof(Policies))]
    public void Every_policy_chooses_distinct_available_experts_with_non_negative_weights(string policy)
    {
        for (var seed = 0; seed < 25; seed++)
        {
            var random = new Random(seed);
            var available = Enumerable.Range(0, Experts).Select(_ => random.NextDouble() > 0.3).ToArray();
            if (!available.Any(a => a)) available[random.Next(Experts)] = true;
            using var router = Router(policy, seed);
            using var hidden = randn(new long[] { 1 + random.Next(40), DModel }, generator: new Generator((ulong)seed)).mul(3);
            var (experts, weights, k) = Route(router, hidden, available);
            for (var t = 0; t < experts.Length / k; t++)
            {
                var row = experts.Skip(t * k).Take(k).Where(e => e >= 0).ToArray();
                Assert.Equal(row.Length, row.Distinct().Count());
                Assert.All(row, e => Assert.True(available[e], $"{policy} chose the unavailable expert {e}"));
                for (var j = 0; j < k; j++)
                {
                    var w = weights[t * k + j];
                    Assert.True(w >= 0 && float.IsFinite(w));
                    if (experts[t * k + j] < 0) Assert.Equal(0f, w);
                }
                if (policy is "topk" or "rank") Assert.Equal(1f, weights.Skip(t * k).Take(k).Sum(), 4);
                if (policy is "topp" or "rank" or "topk") Assert.NotEmpty(row); // never an empty set
            }
        }
    }

    [Fact]
    public void Top_p_keeps_the_smallest_prefix_whose_mass_exceeds_p_and_hard_tokens_get_more_experts()
    {
        using var router = Router("topp", 3);
        var counts = new List<(double Entropy, int Experts)>();
        using var hidden = randn(new long[] { 200, DModel }, generator: new Generator(5)).mul(linspace(0.05, 4, 200).unsqueeze(1));
        var (experts, weights, k) = Route(router, hidden, Enumerable.Repeat(true, Experts).ToArray());
        for (var t = 0; t < 200; t++)
        {
            var kept = weights.Skip(t * k).Take(k).Where((_, j) => experts[t * k + j] >= 0).ToArray();
            Assert.True(kept.Sum() > TopPRouterThreshold || kept.Length == Experts);
            Assert.True(kept.Sum() - kept.Min() <= TopPRouterThreshold + 1e-6, "one expert fewer would already exceed p");
            counts.Add((-kept.Sum(p => p * Math.Log(p)), kept.Length));
        }
        // Flat routing distributions (small activations) need more experts than confident ones.
        Assert.True(counts.Take(50).Average(c => c.Experts) > counts.Skip(150).Average(c => c.Experts));
    }

    private const double TopPRouterThreshold = 0.4;

    [Fact]
    public void Rank_k_routes_each_token_to_its_second_expert_only()
    {
        using var rank = Router("rank", 9);
        using var topk = Router("topk", 9); // the same gate (same seed)
        using var hidden = randn(new long[] { 30, DModel }, generator: new Generator(2));
        var all = Enumerable.Repeat(true, Experts).ToArray();
        var (weak, weakWeights, k) = Route(rank, hidden, all);
        var (strong, _, strongK) = Route(topk, hidden, all);
        Assert.Equal(1, k);
        for (var t = 0; t < 30; t++) Assert.Equal(strong[t * strongK + 1], weak[t]);
        Assert.All(weakWeights, w => Assert.Equal(1f, w));
    }

    [Fact]
    public void Capacity_is_never_exceeded_and_overflow_drops_the_least_confident_slots()
    {
        using var router = Router("capacity", 4);
        using var hidden = randn(new long[] { 64, DModel }, generator: new Generator(8)).add(2); // a skewed batch
        var (experts, weights, k) = Route(router, hidden, Enumerable.Repeat(true, Experts).ToArray());
        var capacity = (int)Math.Ceiling(1.25 * 64 * 2 / Experts);
        Assert.All(experts.Where(e => e >= 0).GroupBy(e => e), g => Assert.True(g.Count() <= capacity, $"expert {g.Key} took {g.Count()} > {capacity}"));
        Assert.Contains(-1L, experts); // the skew makes something overflow
        for (var t = 0; t < 64; t++)
        {
            var sum = weights.Skip(t * k).Take(k).Sum();
            Assert.True(Math.Abs(sum - 1) < 1e-5 || sum == 0, $"token {t}: weights sum to {sum}");
        }
    }

    [Fact]
    public void Self_contrast_combines_logits_by_the_papers_rule()
    {
        var scmoe = new SelfContrastDecoding(Alpha: 0.1, Beta: 0.5);
        var d = scmoe.Combine([2f, 1f, -1f, 0.5f], [1f, 2f, 0f, 0f]);
        // cutoff = ln 0.1 + 2 = -0.303: token 2 is implausible; d = 1.5 z_s - 0.5 z_w for the others.
        Assert.Equal(2.5f, d[0], 5);
        Assert.Equal(0.5f, d[1], 5);
        Assert.Equal(float.NegativeInfinity, d[2]);
        Assert.Equal(0.75f, d[3], 5);
        // The contrast can change the greedy choice: what the weak routing also likes is penalised.
        var flipped = scmoe.Combine([2.0f, 1.9f], [2.0f, 0.0f]);
        Assert.Equal(1, TokenSampler.ArgMax(flipped));
        Assert.Throws<GenerationRequestException>(() => new SelfContrastDecoding(Alpha: 0).Validate());
        Assert.Throws<GenerationRequestException>(() => new SelfContrastDecoding(Beta: -1).Validate());
    }
}
