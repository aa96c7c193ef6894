using System.Globalization;

namespace MoeGrains.Placement;

/// <summary>
/// The cross-layer counts form of a routing trace, CSV with the header
/// <c>model,selection,domain,layer_from,layer_to,expert_from,expert_to,count</c>: one row per (layer pair, expert pair),
/// rows with the same key are added up. This is the form of the shared Mixtral-8x7B statistics.
/// </summary>
public static class CrossLayerCountsFile
{
    public const string Header = "model,selection,domain,layer_from,layer_to,expert_from,expert_to,count";

    /// <summary>
    /// Reads the rows that pass <paramref name="filter"/>, summing domains. A file that mixes models or selections
    /// (top-1 and top-2 counts) must be filtered to one: adding them up would count one token twice.
    /// </summary>
    public static RoutingTrace Read(TextReader reader, string path, RoutingTraceFilter? filter = null, int? experts = null)
    {
        filter ??= new RoutingTraceFilter();
        var header = reader.ReadLine() ?? throw new RoutingTraceFormatException(path, 1, "the file is empty.");
        if (!string.Equals(header.TrimStart('\uFEFF').Trim(), Header, StringComparison.OrdinalIgnoreCase))
        {
            throw new RoutingTraceFormatException(path, 1, $"expected the header '{Header}', got '{RoutingTrace.Shorten(header)}'.");
        }
        var sums = new Dictionary<(int From, int To), Dictionary<(int A, int B), double>>();
        var models = new SortedSet<string>(StringComparer.Ordinal);
        var selections = new SortedSet<string>(StringComparer.Ordinal);
        var allSelections = new SortedSet<string>(StringComparer.Ordinal);
        var maxExpert = -1;
        var lineNumber = 1;
        for (var line = reader.ReadLine(); line is not null; line = reader.ReadLine())
        {
            lineNumber++;
            if (line.Trim().Length == 0)
            {
                continue;
            }
            var f = line.Split(',');
            if (f.Length != 8)
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"expected 8 comma-separated fields, got {f.Length}: '{RoutingTrace.Shorten(line)}'.");
            }
            var (model, selection, domain) = (f[0].Trim(), f[1].Trim(), f[2].Trim());
            allSelections.Add(selection);
            var layerFrom = Int(f[3], "layer_from", lineNumber);
            var layerTo = Int(f[4], "layer_to", lineNumber);
            var a = Int(f[5], "expert_from", lineNumber);
            var b = Int(f[6], "expert_to", lineNumber);
            if (!double.TryParse(f[7], NumberStyles.Float, CultureInfo.InvariantCulture, out var count) || count < 0 || !double.IsFinite(count))
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"count must be a non-negative number, got '{f[7]}'.");
            }
            if (layerTo <= layerFrom)
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"layer_to ({layerTo}) must come after layer_from ({layerFrom}).");
            }
            if (!Matches(filter.Model, model) || !Matches(filter.Selection, selection) || !Matches(filter.Domain, domain))
            {
                continue;
            }
            models.Add(model);
            selections.Add(selection);
            maxExpert = Math.Max(maxExpert, Math.Max(a, b));
            if (!sums.TryGetValue((layerFrom, layerTo), out var pair))
            {
                sums[(layerFrom, layerTo)] = pair = [];
            }
            pair[(a, b)] = pair.GetValueOrDefault((a, b)) + count;
        }
        if (sums.Count == 0)
        {
            throw new RoutingTraceFormatException(path, lineNumber,
                $"no row matches model={filter.Model ?? "*"}, selection={filter.Selection ?? "*"}, domain={filter.Domain ?? "*"} (selections in the file: {string.Join(", ", allSelections)}).");
        }
        if (models.Count > 1)
        {
            throw new RoutingTraceFormatException(path, lineNumber, $"the file holds several models ({string.Join(", ", models)}): choose one.");
        }
        if (selections.Count > 1)
        {
            throw new RoutingTraceFormatException(path, lineNumber, $"the file holds several selections ({string.Join(", ", selections)}): choose one.");
        }
        var n = experts ?? maxExpert + 1;
        if (maxExpert >= n)
        {
            throw new RoutingTraceFormatException(path, lineNumber, $"the file names expert {maxExpert}, but the model has {n} experts per layer.");
        }
        return new RoutingTrace(n, sums.Select(s =>
        {
            var counts = new double[n * n];
            foreach (var ((a, b), c) in s.Value)
            {
                counts[a * n + b] = c;
            }
            return new LayerTransition(s.Key.From, s.Key.To, counts);
        }));

        int Int(string text, string name, int at) =>
            int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= 0
                ? v
                : throw new RoutingTraceFormatException(path, at, $"{name} must be a non-negative integer, got '{text}'.");
    }

    /// <summary>Writes a trace in this form, one row per non-zero count.</summary>
    public static void Write(TextWriter writer, RoutingTrace trace, string model, string selection, string domain)
    {
        writer.WriteLine(Header);
        foreach (var t in trace.Transitions)
        {
            for (var a = 0; a < trace.Experts; a++)
            {
                for (var b = 0; b < trace.Experts; b++)
                {
                    var c = t.Counts[a * trace.Experts + b];
                    if (c > 0)
                    {
                        writer.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{model},{selection},{domain},{t.LayerFrom},{t.LayerTo},{a},{b},{c:R}"));
                    }
                }
            }
        }
    }

    private static bool Matches(string? wanted, string value) =>
        wanted is null || wanted.Length == 0 || wanted == "*" || string.Equals(wanted, value, StringComparison.OrdinalIgnoreCase);
}
