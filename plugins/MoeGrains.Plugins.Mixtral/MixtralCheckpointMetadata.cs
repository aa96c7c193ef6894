using MoeGrains.Plugins.Mixtral.Tokenizers;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// The metadata a Mixtral checkpoint carries for MoeGrains: its configuration (the keys the framework reads:
/// <c>hidden_size</c>, <c>intermediate_size</c>, <c>num_local_experts</c>, ...), the plugins that serve it (experts by
/// <c>swiglu</c>, routers by the plugin of the policy it was trained with: <c>topk</c>, <c>topp</c>, <c>adamoe</c> or <c>thor</c>; the backbone stages by <c>mixtral-*</c>) and its tokenizer.
/// </summary>
public static class MixtralCheckpointMetadata
{
    public const string ExpertPluginKey = "moegrains.expert_plugin";
    public const string RouterPluginKey = "moegrains.router_plugin";
    public const string BackbonePluginKey = "moegrains.backbone_plugin";
    public const string ExpertPlugin = "swiglu";
    public const string RouterPlugin = "topk";
    public const string BackbonePlugin = "mixtral";

    public static Dictionary<string, string> Create(MixtralConfig config, ITextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (tokenizer.VocabSize != config.VocabSize)
        {
            throw new ArgumentException($"The tokenizer has {tokenizer.VocabSize} tokens but the model's vocab_size is {config.VocabSize}.");
        }
        var metadata = config.ToSettings();
        metadata[ExpertPluginKey] = ExpertPlugin;
        metadata[RouterPluginKey] = RoutingPolicies.ServingRouter(config.RouterPolicy);
        metadata[BackbonePluginKey] = BackbonePlugin;
        foreach (var (k, v) in tokenizer.ToMetadata()) metadata[k] = v;
        return metadata;
    }
}
