using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// The sizes and hyper-parameters of a Mixtral-style decoder, with the names and the JSON form of Hugging Face's
/// <c>MixtralConfig</c> (<c>config.json</c>), so that a checkpoint of that family is described the same way.
/// </summary>
public sealed record MixtralConfig
{
    public const string ModelType = "mixtral";

    [JsonPropertyName("architectures")] public string[] Architectures { get; init; } = ["MixtralForCausalLM"];
    [JsonPropertyName("model_type")] public string Type { get; init; } = ModelType;
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; } = 65;
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; } = 128;
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; } = 256;
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; } = 4;
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; } = 4;
    [JsonPropertyName("num_key_value_heads")] public int NumKeyValueHeads { get; init; } = 4;
    [JsonPropertyName("num_local_experts")] public int NumLocalExperts { get; init; } = 8;
    [JsonPropertyName("num_experts_per_tok")] public int NumExpertsPerTok { get; init; } = 2;
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 256;
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; init; } = 10000.0;
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-5;
    [JsonPropertyName("router_aux_loss_coef")] public double RouterAuxLossCoef { get; init; } = 0.01;
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; }
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "silu";
    [JsonPropertyName("initializer_range")] public double InitializerRange { get; init; } = 0.02;
    [JsonPropertyName("attention_dropout")] public double AttentionDropout { get; init; }
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }
    [JsonPropertyName("output_router_logits")] public bool OutputRouterLogits { get; init; } = true;
    [JsonPropertyName("torch_dtype")] public string TorchDType { get; init; } = "float32";
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id")] public int? EosTokenId { get; init; }

    // MoeGrains' training-time routing policy and its hyper-parameters (not in Hugging Face's MixtralConfig; other readers ignore them).
    [JsonPropertyName("router_policy")] public string RouterPolicy { get; init; } = RoutingPolicies.TopK;
    [JsonPropertyName("top_p_threshold")] public double TopPThreshold { get; init; } = 0.4;
    [JsonPropertyName("top_p_max_experts")] public int? TopPMaxExperts { get; init; }
    [JsonPropertyName("router_entropy_loss_coef")] public double RouterEntropyLossCoef { get; init; } = 1e-4;
    [JsonPropertyName("num_null_experts")] public int NumNullExperts { get; init; }
    [JsonPropertyName("thor_consistency_alpha")] public double ThorConsistencyAlpha { get; init; } = 1.0;

    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.Never };

    /// <summary>Names what is wrong with these sizes, or returns null when they make a model.</summary>
    public string? Validate()
    {
        if (VocabSize < 1 || HiddenSize < 1 || IntermediateSize < 1 || NumHiddenLayers < 1) return "vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive";
        if (NumAttentionHeads < 1 || HiddenSize % NumAttentionHeads != 0) return $"hidden_size {HiddenSize} must be a multiple of num_attention_heads {NumAttentionHeads}";
        if (HeadDim % 2 != 0) return $"the head size hidden_size / num_attention_heads = {HeadDim} must be even (rotary positions rotate pairs)";
        if (NumKeyValueHeads < 1 || NumAttentionHeads % NumKeyValueHeads != 0) return $"num_attention_heads {NumAttentionHeads} must be a multiple of num_key_value_heads {NumKeyValueHeads}";
        if (NumLocalExperts < 1) return "num_local_experts must be positive";
        if (NumExpertsPerTok < 1 || NumExpertsPerTok > NumLocalExperts + NumNullExperts) return $"num_experts_per_tok must be in 1..{NumLocalExperts + NumNullExperts}, got {NumExpertsPerTok}";
        if (MaxPositionEmbeddings < 2) return "max_position_embeddings must be at least 2";
        if (!(RopeTheta > 0) || !(RmsNormEps > 0)) return "rope_theta and rms_norm_eps must be positive";
        if (RouterAuxLossCoef < 0 || double.IsNaN(RouterAuxLossCoef)) return "router_aux_loss_coef must not be negative";
        if (!RoutingPolicies.All.Contains(RouterPolicy)) return $"router_policy must be one of {string.Join(", ", RoutingPolicies.All)}, got '{RouterPolicy}'";
        if (!(TopPThreshold > 0 && TopPThreshold <= 1)) return $"top_p_threshold must be in (0, 1], got {TopPThreshold}";
        if (TopPMaxExperts is { } cap && (cap < 1 || cap > NumLocalExperts)) return $"top_p_max_experts must be in 1..{NumLocalExperts}";
        if (RouterEntropyLossCoef < 0 || double.IsNaN(RouterEntropyLossCoef)) return "router_entropy_loss_coef must not be negative";
        if (ThorConsistencyAlpha < 0 || double.IsNaN(ThorConsistencyAlpha)) return "thor_consistency_alpha must not be negative";
        if (NumNullExperts < 0) return "num_null_experts must not be negative";
        if (RouterPolicy == RoutingPolicies.AdaMoE && NumNullExperts < 1) return "the adamoe policy needs num_null_experts of at least 1";
        if (RouterPolicy != RoutingPolicies.AdaMoE && NumNullExperts != 0) return $"num_null_experts is for the adamoe policy only (router_policy is '{RouterPolicy}')";
        return null;
    }

    public MixtralConfig EnsureValid() => Validate() is { } error ? throw new ArgumentException($"Invalid Mixtral configuration: {error}.") : this;

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static MixtralConfig FromJson(string json) =>
        (JsonSerializer.Deserialize<MixtralConfig>(json, Json) ?? throw new ArgumentException("config.json is empty.")).EnsureValid();

    /// <summary>
    /// The configuration as flat string settings: the checkpoint's metadata and what plugins receive in
    /// <see cref="PluginContext.Settings"/>. Holds the keys the framework reads (<c>hidden_size</c>, ...).
    /// </summary>
    public Dictionary<string, string> ToSettings()
    {
        static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
        static string D(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        return new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["model_type"] = Type,
            ["vocab_size"] = I(VocabSize),
            ["hidden_size"] = I(HiddenSize),
            ["intermediate_size"] = I(IntermediateSize),
            ["num_hidden_layers"] = I(NumHiddenLayers),
            ["num_attention_heads"] = I(NumAttentionHeads),
            ["num_key_value_heads"] = I(NumKeyValueHeads),
            ["num_local_experts"] = I(NumLocalExperts),
            ["num_experts_per_tok"] = I(NumExpertsPerTok),
            ["max_position_embeddings"] = I(MaxPositionEmbeddings),
            ["rope_theta"] = D(RopeTheta),
            ["rms_norm_eps"] = D(RmsNormEps),
            ["router_aux_loss_coef"] = D(RouterAuxLossCoef),
            ["tie_word_embeddings"] = TieWordEmbeddings ? "true" : "false",
            ["router_policy"] = RouterPolicy,
            ["top_p_threshold"] = D(TopPThreshold),
            ["top_p_max_experts"] = I(TopPMaxExperts ?? NumLocalExperts),
            ["router_entropy_loss_coef"] = D(RouterEntropyLossCoef),
            ["num_null_experts"] = I(NumNullExperts),
            ["thor_consistency_alpha"] = D(ThorConsistencyAlpha),
        };
    }

    /// <summary>Reads the configuration back from settings (a plugin's context or a checkpoint's metadata).</summary>
    public static MixtralConfig FromSettings(IReadOnlyDictionary<string, string> s)
    {
        int I(string key) => s.TryGetValue(key, out var v) && int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var x)
            ? x : throw new KeyNotFoundException($"The Mixtral setting '{key}' is missing or not an integer.");
        double D(string key, double fallback) => s.TryGetValue(key, out var v) && double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var x) ? x : fallback;
        return new MixtralConfig
        {
            VocabSize = I("vocab_size"),
            HiddenSize = I("hidden_size"),
            IntermediateSize = I("intermediate_size"),
            NumHiddenLayers = I("num_hidden_layers"),
            NumAttentionHeads = I("num_attention_heads"),
            NumKeyValueHeads = s.ContainsKey("num_key_value_heads") ? I("num_key_value_heads") : I("num_attention_heads"),
            NumLocalExperts = I("num_local_experts"),
            NumExpertsPerTok = I("num_experts_per_tok"),
            MaxPositionEmbeddings = I("max_position_embeddings"),
            RopeTheta = D("rope_theta", 10000.0),
            RmsNormEps = D("rms_norm_eps", 1e-5),
            RouterAuxLossCoef = D("router_aux_loss_coef", 0.01),
            TieWordEmbeddings = s.TryGetValue("tie_word_embeddings", out var tie) && tie == "true",
            RouterPolicy = s.TryGetValue("router_policy", out var policy) ? policy : RoutingPolicies.TopK,
            TopPThreshold = D("top_p_threshold", 0.4),
            TopPMaxExperts = s.ContainsKey("top_p_max_experts") ? I("top_p_max_experts") : null,
            RouterEntropyLossCoef = D("router_entropy_loss_coef", 1e-4),
            NumNullExperts = s.ContainsKey("num_null_experts") ? I("num_null_experts") : 0,
            ThorConsistencyAlpha = D("thor_consistency_alpha", 1.0),
        }.EnsureValid();
    }
}
