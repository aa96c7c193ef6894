using System.Globalization;
using TorchSharp;

namespace MoeGrains;

/// <summary>
/// What the host hands a plugin's constructor (alongside any service from dependency injection, such as
/// <c>ILogger&lt;T&gt;</c> or options): where it sits in the model, its device, its settings and its weights.
/// </summary>
public sealed class PluginContext
{
    /// <summary>A stable identity, such as <c>default/0/3</c> (model, layer, expert).</summary>
    public required string Id { get; init; }

    public int Layer { get; init; }

    /// <summary>The expert's index in its layer (<c>-1</c> for a router).</summary>
    public int Index { get; init; } = -1;

    public required torch.Device Device { get; init; }

    /// <summary>Sizes and hyper-parameters (from the checkpoint's metadata and configuration): <c>d_model</c>, <c>d_ff</c>, ...</summary>
    public IReadOnlyDictionary<string, string> Settings { get; init; } = new Dictionary<string, string>();

    /// <summary>
    /// The plugin's own weights, keyed by their names relative to the plugin (<c>w1.weight</c>), already validated and on
    /// <see cref="Device"/>; <c>null</c> when the plugin should initialise itself from <see cref="Seed"/>. The host disposes
    /// them once the constructor returns: clone what you keep.
    /// </summary>
    public IReadOnlyDictionary<string, torch.Tensor>? Weights { get; init; }

    public long Seed { get; init; }

    /// <summary>Reads an integer setting, or throws an error that names the setting.</summary>
    public int GetInt(string key)
    {
        if (!Settings.TryGetValue(key, out var text))
        {
            throw new KeyNotFoundException($"Plugin '{Id}' needs the setting '{key}', which is missing.");
        }
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
        {
            throw new FormatException($"Plugin '{Id}': setting '{key}' must be an integer, got '{text}'.");
        }
        return value;
    }

    public int GetInt(string key, int fallback) => Settings.ContainsKey(key) ? GetInt(key) : fallback;

    public double GetDouble(string key, double fallback) =>
        Settings.TryGetValue(key, out var text) && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : fallback;

    /// <summary>Returns the weight <paramref name="name"/> or throws an error naming the plugin and the weight.</summary>
    public torch.Tensor GetWeight(string name, params long[] expectedShape)
    {
        if (Weights is null || !Weights.TryGetValue(name, out var tensor))
        {
            throw new KeyNotFoundException($"Plugin '{Id}': the checkpoint has no weight '{name}'.");
        }
        if (expectedShape.Length > 0 && !tensor.shape.SequenceEqual(expectedShape))
        {
            throw new InvalidDataException(
                $"Plugin '{Id}': weight '{name}' has shape [{string.Join(", ", tensor.shape)}], expected [{string.Join(", ", expectedShape)}].");
        }
        return tensor;
    }
}

/// <summary>A plugin whose weights can be exported (to write a checkpoint), with names relative to the plugin.</summary>
public interface IStateDict
{
    IEnumerable<KeyValuePair<string, torch.Tensor>> StateDict();
}
