using System.Globalization;

namespace MoeGrains.Placement;

/// <summary>
/// Which silo (0..Silos-1, in the order the cluster sorts its silos) holds each expert of the planned layers.
/// <c>Assignment[i * Experts + e]</c> is the silo of expert e of layer <c>Layers[i]</c>.
/// </summary>
public sealed class PlacementPlan
{
    public PlacementPlan(IReadOnlyList<int> layers, int experts, int silos, int[] assignment)
    {
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentNullException.ThrowIfNull(assignment);
        if (assignment.Length != layers.Count * experts)
        {
            throw new ArgumentException($"{assignment.Length} assignments for {layers.Count} layers of {experts} experts.", nameof(assignment));
        }
        Layers = layers;
        Experts = experts;
        Silos = silos;
        Assignment = assignment;
        _layerIndex = layers.Select((l, i) => (l, i)).ToDictionary(x => x.l, x => x.i);
    }

    private readonly Dictionary<int, int> _layerIndex;

    public IReadOnlyList<int> Layers { get; }

    public int Experts { get; }

    public int Silos { get; }

    public int[] Assignment { get; }

    /// <summary>The silo of <paramref name="expert"/> at <paramref name="layer"/>, or null when the plan does not cover it.</summary>
    public int? SiloOf(int layer, int expert) =>
        _layerIndex.TryGetValue(layer, out var i) && (uint)expert < (uint)Experts ? Assignment[i * Experts + expert] : null;

    /// <summary>Writes the plan as CSV <c>layer,expert,silo</c>.</summary>
    public void WriteCsv(TextWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteLine("layer,expert,silo");
        for (var i = 0; i < Layers.Count; i++)
        {
            for (var e = 0; e < Experts; e++)
            {
                writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{Layers[i]},{e},{Assignment[i * Experts + e]}"));
            }
        }
    }

    /// <summary>Reads a plan written by <see cref="WriteCsv"/>; every (layer, expert) of the listed layers must appear once.</summary>
    public static PlacementPlan ReadCsv(TextReader reader, string path)
    {
        ArgumentNullException.ThrowIfNull(reader);
        var header = reader.ReadLine();
        if (header?.Trim() != "layer,expert,silo")
        {
            throw new RoutingTraceFormatException(path, 1, "expected the header 'layer,expert,silo'.");
        }
        var rows = new Dictionary<(int Layer, int Expert), int>();
        var lineNumber = 1;
        for (var line = reader.ReadLine(); line is not null; line = reader.ReadLine())
        {
            lineNumber++;
            if (line.Trim().Length == 0) continue;
            var f = line.Split(',');
            if (f.Length != 3 || !int.TryParse(f[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) || l < 0
                || !int.TryParse(f[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out var e) || e < 0
                || !int.TryParse(f[2], NumberStyles.Integer, CultureInfo.InvariantCulture, out var s) || s < 0)
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"expected three non-negative integers layer,expert,silo, got '{RoutingTrace.Shorten(line)}'.");
            }
            if (!rows.TryAdd((l, e), s))
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"layer {l} expert {e} is listed twice.");
            }
        }
        if (rows.Count == 0)
        {
            throw new RoutingTraceFormatException(path, lineNumber, "the plan is empty.");
        }
        var layers = rows.Keys.Select(k => k.Layer).Distinct().Order().ToArray();
        var experts = rows.Keys.Max(k => k.Expert) + 1;
        var silos = rows.Values.Max() + 1;
        var assignment = new int[layers.Length * experts];
        for (var i = 0; i < layers.Length; i++)
        {
            for (var e = 0; e < experts; e++)
            {
                assignment[i * experts + e] = rows.TryGetValue((layers[i], e), out var s)
                    ? s
                    : throw new RoutingTraceFormatException(path, lineNumber, $"layer {layers[i]} expert {e} is missing.");
            }
        }
        return new PlacementPlan(layers, experts, silos, assignment);
    }
}
