namespace MoeGrains.Generation;

/// <summary>
/// Self-contrast decoding (SCMoE, Shi et al., "Unchosen Experts Can Contribute Too"), as in the authors' code: with
/// next-token logits <c>z_s</c> from the strong routing (the model's top-k) and <c>z_w</c> from a weak one (rank-k, the
/// single expert at 0-based rank <see cref="WeakRank"/>) on the same prefix, <c>d = (1 + β)·z_s − β·z_w</c>, and every
/// token whose strong logit is below <c>log α + max z_s</c> (the adaptive plausibility constraint) is excluded. Defaults
/// α = 0.1, β = 0.5, weak rank 1. Part of a generation request (<see cref="GenerationOptions.SelfContrast"/>): the
/// session grain then runs both passes through the same expert grains and streams the contrasted tokens.
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.SelfContrastDecoding")]
public sealed record SelfContrastDecoding(
    [property: Id(0)] double Alpha = SelfContrastDecoding.DEFAULT_ALPHA,
    [property: Id(1)] double Beta = SelfContrastDecoding.DEFAULT_BETA)
{
    public const double DEFAULT_ALPHA = 0.1;
    public const double DEFAULT_BETA = 0.5;
    public const int DEFAULT_WEAK_RANK = 1;

    /// <summary>The 0-based rank of the weak pass's single expert (1: the second most probable).</summary>
    [Id(2)] public int WeakRank { get; init; } = DEFAULT_WEAK_RANK;

    /// <summary>The router of the weak pass: the <c>rank</c> plugin, at <see cref="WeakRank"/>.</summary>
    public string WeakRouter => WeakRank == DEFAULT_WEAK_RANK ? "rank" : Plugins.RouterNames.With("rank", ("rank_k", WeakRank));

    /// <summary>Throws <see cref="GenerationRequestException"/> naming the bad parameter (<c>scmoe.alpha</c>, ...).</summary>
    public void Validate(int? experts = null)
    {
        if (!(Alpha > 0 && Alpha <= 1))
        {
            throw new GenerationRequestException(GenerationRequestValidator.ScmoeAlphaField, $"SCMoE alpha must be in (0, 1], got {Alpha}.");
        }
        if (!double.IsFinite(Beta) || Beta < 0)
        {
            throw new GenerationRequestException(GenerationRequestValidator.ScmoeBetaField, $"SCMoE beta must be finite and not negative, got {Beta}.");
        }
        if (WeakRank < 0 || (experts is { } n && WeakRank >= n))
        {
            throw new GenerationRequestException(GenerationRequestValidator.ScmoeWeakRankField,
                $"SCMoE weak rank must be in 0..{(experts is { } m ? (m - 1).ToString(System.Globalization.CultureInfo.InvariantCulture) : "experts - 1")}, got {WeakRank}.");
        }
    }

    /// <summary>The contrasted logits; excluded tokens are <c>-∞</c>.</summary>
    public float[] Combine(ReadOnlySpan<float> strong, ReadOnlySpan<float> weak)
    {
        if (strong.Length != weak.Length || strong.Length == 0)
        {
            throw new ArgumentException($"The strong and weak logits must have the same, non-zero length ({strong.Length} and {weak.Length}).");
        }
        var max = float.NegativeInfinity;
        foreach (var z in strong) max = Math.Max(max, z);
        var cutoff = Math.Log(Alpha) + max;
        var d = new float[strong.Length];
        for (var v = 0; v < d.Length; v++)
        {
            d[v] = strong[v] < cutoff ? float.NegativeInfinity : (float)((1 + Beta) * strong[v] - Beta * weak[v]);
        }
        return d;
    }

    /// <summary>A decoding step that feeds both passes the same tokens and returns the contrasted logits.</summary>
    /// <remarks>Both passes run in the caller's context (no ConfigureAwait(false)): in a grain, the weak pass calls grains too.</remarks>
    public DecoderStepAsync Step(DecoderStepAsync strong, DecoderStepAsync weak) => async (tokens, ct) =>
    {
        var s = await strong(tokens, ct);
        var w = await weak(tokens, ct);
        return Combine(s, w);
    };
}
