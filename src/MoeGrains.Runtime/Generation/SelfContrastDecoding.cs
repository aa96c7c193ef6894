namespace MoeGrains.Generation;

/// <summary>
/// Self-contrast decoding (SCMoE, Shi et al., "Unchosen Experts Can Contribute Too"), as in the authors' code: with
/// next-token logits <c>z_s</c> from the strong routing (the model's top-k) and <c>z_w</c> from a weak one (rank-k, a
/// single lower-ranked expert) on the same prefix, <c>d = (1 + β)·z_s − β·z_w</c>, and every token whose strong logit
/// is below <c>log α + max z_s</c> (the adaptive plausibility constraint) is excluded. Defaults α = 0.1, β = 0.5.
/// </summary>
public sealed record SelfContrastDecoding(double Alpha = SelfContrastDecoding.DEFAULT_ALPHA, double Beta = SelfContrastDecoding.DEFAULT_BETA)
{
    public const double DEFAULT_ALPHA = 0.1;
    public const double DEFAULT_BETA = 0.5;

    /// <summary>The router of the weak pass (rank-k).</summary>
    public string WeakRouter { get; init; } = "rank";

    public void Validate()
    {
        if (!(Alpha > 0 && Alpha <= 1))
        {
            throw new GenerationRequestException($"SCMoE alpha must be in (0, 1], got {Alpha}.");
        }
        if (!double.IsFinite(Beta) || Beta < 0)
        {
            throw new GenerationRequestException($"SCMoE beta must be finite and not negative, got {Beta}.");
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
    public DecoderStepAsync Step(DecoderStepAsync strong, DecoderStepAsync weak) => async (tokens, ct) =>
    {
        var s = await strong(tokens, ct).ConfigureAwait(false);
        var w = await weak(tokens, ct).ConfigureAwait(false);
        return Combine(s, w);
    };
}
