using System.Globalization;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;

namespace MoeGrains.Models;

/// <summary>
/// A mixture-of-experts model as its checkpoint describes it. Sizes use Mixtral's config names
/// (<c>num_hidden_layers</c>, <c>num_local_experts</c>, <c>hidden_size</c>, <c>intermediate_size</c>,
/// <c>num_experts_per_tok</c>) and tensors Mixtral's names (<c>model.layers.N.block_sparse_moe.experts.E.w1.weight</c>).
/// </summary>
public sealed record ModelSpec(string Name, int Layers, int Experts, int DModel, int DFf, int TopK, string ExpertPlugin, string RouterPlugin)
{
    public const string ExpertPluginKey = "moegrains.expert_plugin";
    public const string RouterPluginKey = "moegrains.router_plugin";

    public string? Path { get; init; }

    /// <summary>The rest of the checkpoint's metadata (a router's hyper-parameters such as <c>top_p_threshold</c>), handed to plugins with the sizes.</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    public static string ExpertPrefix(int layer, int expert) => $"model.layers.{layer}.block_sparse_moe.experts.{expert}.";

    public static string RouterPrefix(int layer) => $"model.layers.{layer}.block_sparse_moe.gate.";

    /// <summary>The settings handed to plugins (the checkpoint's metadata: sizes and hyper-parameters).</summary>
    public IReadOnlyDictionary<string, string> Settings => new Dictionary<string, string>(Metadata ?? new Dictionary<string, string>())
    {
        ["num_hidden_layers"] = Layers.ToString(CultureInfo.InvariantCulture),
        ["num_local_experts"] = Experts.ToString(CultureInfo.InvariantCulture),
        ["hidden_size"] = DModel.ToString(CultureInfo.InvariantCulture),
        ["intermediate_size"] = DFf.ToString(CultureInfo.InvariantCulture),
        ["num_experts_per_tok"] = TopK.ToString(CultureInfo.InvariantCulture),
        [ExpertPluginKey] = ExpertPlugin,
        [RouterPluginKey] = RouterPlugin,
    };

    /// <summary>Reads the spec from a checkpoint's metadata, naming any missing or bad key.</summary>
    public static ModelSpec FromCheckpoint(string name, SafeTensorsFile file)
    {
        int Int(string key)
        {
            if (!file.Metadata.TryGetValue(key, out var text) || !int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) || v <= 0)
            {
                throw new CheckpointException($"Checkpoint '{file.Path}': metadata '{key}' is missing or not a positive integer.");
            }
            return v;
        }
        string Text(string key) => file.Metadata.TryGetValue(key, out var v) && v.Length > 0
            ? v
            : throw new CheckpointException($"Checkpoint '{file.Path}': metadata '{key}' is missing.");
        var spec = new ModelSpec(name, Int("num_hidden_layers"), Int("num_local_experts"), Int("hidden_size"), Int("intermediate_size"),
            Int("num_experts_per_tok"), Text(ExpertPluginKey), Text(RouterPluginKey)) { Path = file.Path, Metadata = file.Metadata };
        // AdaMoE's k counts null experts too (num_null_experts, zero for other models).
        var nulls = file.Metadata.TryGetValue("num_null_experts", out var m) && int.TryParse(m, NumberStyles.Integer, CultureInfo.InvariantCulture, out var nm) && nm > 0 ? nm : 0;
        if (spec.TopK > spec.Experts + nulls)
        {
            throw new CheckpointException($"Checkpoint '{file.Path}': num_experts_per_tok {spec.TopK} exceeds num_local_experts {spec.Experts}{(nulls > 0 ? $" + {nulls} null experts" : "")}.");
        }
        return spec;
    }

    public ModelInfo ToInfo() => new(Name, Layers, Experts, DModel, TopK, ExpertPlugin, RouterPlugin);
}
