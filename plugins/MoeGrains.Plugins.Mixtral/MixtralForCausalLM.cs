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

    /// <summary>Next-token logits <c>[batch, tokens, vocab]</c> and how each layer routed (router logits <c>[batch·tokens, experts]</c> and choices).</summary>
    public (Tensor Logits, MoeRouting[] Routing) forward(Tensor inputIds, LayerKvCache[]? caches = null)
    {
        using var scope = NewDisposeScope();
        var (hidden, routing) = model.forward(inputIds, caches);
        var logits = lm_head.forward(hidden).MoveToOuterDisposeScope();
        foreach (var r in routing)
        {
            r.Logits.MoveToOuterDisposeScope();
            r.Chosen.MoveToOuterDisposeScope();
        }
        return (logits, routing);
    }

    /// <summary>
    /// The training loss under the configuration's <c>router_policy</c>: cross-entropy of <paramref name="targets"/> plus
    /// <list type="bullet">
    /// <item><c>topk</c>: <c>router_aux_loss_coef</c> × the Switch load-balancing loss;</item>
    /// <item><c>topp</c>: <c>router_aux_loss_coef</c> × the balance loss over the kept slots + <c>router_entropy_loss_coef</c> × the mean router entropy (the dynamic loss);</item>
    /// <item><c>adamoe</c>: <c>router_aux_loss_coef</c> × the balance loss over n + m experts with the null experts balanced as a group;</item>
    /// <item><c>thor</c> (while training): a second forward pass with other random experts, <c>CE₁ + CE₂ + α · SKL(p₁, p₂)</c>
    /// (α = <c>thor_consistency_alpha</c>, SKL averaged over tokens); the language-model part reported is (CE₁ + CE₂) / 2 and the auxiliary part the SKL.</item>
    /// </list>
    /// </summary>
    public CausalLmLoss Loss(Tensor inputIds, Tensor targets)
    {
        using var scope = NewDisposeScope();
        var (logits, routing) = forward(inputIds);
        var lm = nn.functional.cross_entropy(logits.view(-1, Config.VocabSize), targets.reshape(-1));
        Tensor total, aux;
        switch (Config.RouterPolicy)
        {
            case RoutingPolicies.TopP:
                aux = RoutingLosses.Balance(routing, Config.NumLocalExperts, 0);
                total = lm.add(aux.mul(Config.RouterAuxLossCoef)).add(RoutingLosses.Entropy(routing).mul(Config.RouterEntropyLossCoef));
                break;
            case RoutingPolicies.AdaMoE:
                aux = RoutingLosses.Balance(routing, Config.NumLocalExperts, Config.NumNullExperts);
                total = lm.add(aux.mul(Config.RouterAuxLossCoef));
                break;
            case RoutingPolicies.Thor when training:
                var (second, _) = forward(inputIds);
                var lm2 = nn.functional.cross_entropy(second.view(-1, Config.VocabSize), targets.reshape(-1));
                aux = RoutingLosses.SymmetricKl(logits, second);
                total = lm.add(lm2).add(aux.mul(Config.ThorConsistencyAlpha));
                lm = lm.add(lm2).div(2);
                break;
            case RoutingPolicies.Thor:
                aux = zeros(1).squeeze();
                total = lm;
                break;
            default:
                aux = LoadBalancingLoss.Compute([.. routing.Select(r => r.Logits)], Config.NumExpertsPerTok);
                total = lm.add(aux.mul(Config.RouterAuxLossCoef));
                break;
        }
        return new CausalLmLoss(total.MoveToOuterDisposeScope(), lm.MoveToOuterDisposeScope(), aux.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// THOR's disagreement between random routes: the mean over tokens of SKL(p₁, p₂) of two forward passes whose random
    /// experts are drawn independently (per pass in training mode, per token in evaluation mode). No gradients.
    /// </summary>
    public double RouteDisagreement(Tensor inputIds)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var (a, _) = forward(inputIds);
        var (b, _) = forward(inputIds);
        return RoutingLosses.SymmetricKl(a, b).item<float>();
    }

    /// <summary>Reseeds the random choices of every block (THOR's random experts), e.g. from the training seed.</summary>
    public void ReseedRouting(int seed)
    {
        for (var i = 0; i < model.Layers.Count; i++) model.Layers[i].Moe.Reseed(unchecked(seed * 31 + i));
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
