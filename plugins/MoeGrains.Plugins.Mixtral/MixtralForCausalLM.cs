using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>The losses of one batch: the total that is minimised, and its language-model and load-balancing parts.</summary>
public sealed record CausalLmLoss(Tensor Total, Tensor LanguageModel, Tensor LoadBalancing) : IDisposable
{
    public void Dispose()
    {
        Total.Dispose();
        LanguageModel.Dispose();
        LoadBalancing.Dispose();
    }
}

/// <summary>
/// The Mixtral-style language model: <see cref="MixtralModel"/> and the output projection <c>lm_head</c>. Its
/// <see cref="nn.Module.named_parameters"/> are Mixtral's tensor names (<c>model.layers.0.self_attn.q_proj.weight</c>, ...).
/// </summary>
public sealed class MixtralForCausalLM : nn.Module
{
    private readonly MixtralModel model;
    private readonly Linear lm_head;

    /// <summary>Builds the model with weights drawn from <paramref name="seed"/> (normal, std <c>initializer_range</c>;
    /// the projections into the residual stream scaled by 1/√(2·layers), as GPT-2 does).</summary>
    public MixtralForCausalLM(MixtralConfig config, long seed = 1234) : base(nameof(MixtralForCausalLM))
    {
        Config = config.EnsureValid();
        model = new MixtralModel(config);
        lm_head = nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
        Initialise(seed);
        if (config.TieWordEmbeddings)
        {
            lm_head.weight = model.EmbedTokens.weight!;
        }
    }

    public MixtralConfig Config { get; }

    private void Initialise(long seed)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)seed);
        var std = Config.InitializerRange;
        var residualStd = std / Math.Sqrt(2.0 * Config.NumHiddenLayers);
        foreach (var (name, p) in named_parameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                p.fill_(1.0);
                continue;
            }
            var s = name.EndsWith("o_proj.weight", StringComparison.Ordinal) || name.EndsWith(".w2.weight", StringComparison.Ordinal) ? residualStd : std;
            p.copy_(randn(p.shape, generator: gen).mul_(s));
        }
    }

    /// <summary>Next-token logits <c>[batch, tokens, vocab]</c> and each layer's router logits <c>[batch·tokens, experts]</c>.</summary>
    public (Tensor Logits, Tensor[] RouterLogits) forward(Tensor inputIds, LayerKvCache[]? caches = null)
    {
        using var scope = NewDisposeScope();
        var (hidden, routerLogits) = model.forward(inputIds, caches);
        var logits = lm_head.forward(hidden).MoveToOuterDisposeScope();
        foreach (var l in routerLogits) l.MoveToOuterDisposeScope();
        return (logits, routerLogits);
    }

    /// <summary>Cross-entropy of <paramref name="targets"/> plus <c>router_aux_loss_coef</c> × the load-balancing loss.</summary>
    public CausalLmLoss Loss(Tensor inputIds, Tensor targets)
    {
        using var scope = NewDisposeScope();
        var (logits, routerLogits) = forward(inputIds);
        var lm = nn.functional.cross_entropy(logits.view(-1, Config.VocabSize), targets.reshape(-1));
        var balance = LoadBalancingLoss.Compute(routerLogits, Config.NumExpertsPerTok);
        var total = lm.add(balance.mul(Config.RouterAuxLossCoef));
        return new CausalLmLoss(total.MoveToOuterDisposeScope(), lm.MoveToOuterDisposeScope(), balance.MoveToOuterDisposeScope());
    }

    /// <summary>A fresh KV cache per layer, each holding at most <c>max_position_embeddings</c> positions.</summary>
    public LayerKvCache[] NewCaches() => Enumerable.Range(0, Config.NumHiddenLayers).Select(_ => new LayerKvCache(Config.MaxPositionEmbeddings)).ToArray();

    /// <summary>The weights under Mixtral's names (<c>lm_head.weight</c> included when tied).</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> StateDict() => named_parameters().Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter));

    /// <summary>Copies weights in by name; every parameter must be present with its shape.</summary>
    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> weights)
    {
        using var _ = no_grad();
        foreach (var (name, p) in named_parameters())
        {
            if (!weights.TryGetValue(name, out var w))
            {
                throw new KeyNotFoundException($"The checkpoint has no tensor '{name}'.");
            }
            if (!w.shape.SequenceEqual(p.shape))
            {
                throw new InvalidDataException($"Tensor '{name}' has shape [{string.Join(", ", w.shape)}], the model expects [{string.Join(", ", p.shape)}].");
            }
            p.copy_(w);
        }
    }
}
