namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// The routing policies the Mixtral-style model can be trained with (<c>router_policy</c> in <c>config.json</c>), and
/// the router plugin that serves each, so that a checkpoint is routed at inference the way it was trained.
/// </summary>
public static class RoutingPolicies
{
    /// <summary>Mixtral's gate: softmax, the k most probable, renormalised; the Switch load-balancing loss.</summary>
    public const string TopK = "topk";

    /// <summary>Top-p dynamic routing (An et al.) with the balance loss over the kept slots and the dynamic (entropy) loss.</summary>
    public const string TopP = "topp";

    /// <summary>AdaMoE: m null experts in the gate, top-k over n + m, the null experts balanced as a group.</summary>
    public const string AdaMoE = "adamoe";

    /// <summary>THOR: no gate, one random expert per layer per forward pass, two passes and their consistency loss.</summary>
    public const string Thor = "thor";

    public static readonly string[] All = [TopK, TopP, AdaMoE, Thor];

    /// <summary>The router plugin that serves a checkpoint trained with <paramref name="policy"/>.</summary>
    public static string ServingRouter(string policy) => policy switch
    {
        TopK => "topk",
        TopP => "topp",
        AdaMoE => "adamoe",
        Thor => "thor",
        _ => throw new ArgumentException($"Unknown routing policy '{policy}' (known: {string.Join(", ", All)})."),
    };
}
