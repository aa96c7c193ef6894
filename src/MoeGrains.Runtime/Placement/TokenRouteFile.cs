using System.Globalization;
using System.Text;
using System.Text.Json;

namespace MoeGrains.Placement;

/// <summary>One token's route: the experts (and router weights) it was sent to at each traced layer, layers ascending.</summary>
public sealed record TokenRoute(long Token, IReadOnlyList<LayerRoute> Layers)
{
    /// <summary>The token's id in the model's vocabulary, for routing-path predictors; -1 when unknown.</summary>
    public long Vocabulary { get; init; } = -1;
}

/// <summary>The experts a token was routed to at one layer, with the router's weights (same length).</summary>
public sealed record LayerRoute(int Layer, int[] Experts, float[] Weights);

/// <summary>
/// The per-token routes form of a routing trace, in either of two text encodings:
/// <list type="bullet">
/// <item>CSV, one row per token: header <c>token,layer_0,layer_1,...</c> (one column per traced layer, named by its layer
/// number); each cell lists the token's experts at that layer as space-separated <c>expert:weight</c> pairs
/// (<c>3:0.62 5:0.38</c>; a bare <c>3</c> means weight 1/k); an empty cell means the token was not traced there. An
/// optional <c>vocab</c> column right after <c>token</c> (<c>token,vocab,layer_0,...</c>) holds the token's id in the
/// model's vocabulary (empty or -1: unknown); files without it read as before, every vocabulary id -1.</item>
/// <item>JSON lines, one object per token: <c>{"token":17,"layers":[0,1],"experts":[[3,5],[1,2]],"weights":[[0.62,0.38],[0.7,0.3]]}</c>;
/// <c>weights</c> may be left out; an optional <c>"vocab":42</c> gives the vocabulary id.</item>
/// </list>
/// The writers add the vocabulary column (or property) only when some route knows its vocabulary id, so a trace without
/// them is written exactly as before.
/// </summary>
public static class TokenRouteFile
{
    /// <summary>Reads either encoding (JSON lines when the first line starts with <c>{</c>); errors name the line.</summary>
    public static IReadOnlyList<TokenRoute> Read(TextReader reader, string path)
    {
        var first = reader.ReadLine() ?? throw new RoutingTraceFormatException(path, 1, "the file is empty.");
        first = first.TrimStart('\uFEFF');
        return first.TrimStart().StartsWith('{') ? ReadJsonLines(first, reader, path) : ReadCsv(first, reader, path);
    }

    public static IReadOnlyList<TokenRoute> Read(string path)
    {
        using var reader = new StreamReader(path);
        return Read(reader, path);
    }

    private static List<TokenRoute> ReadCsv(string header, TextReader reader, string path)
    {
        var columns = header.Split(',').Select(c => c.Trim()).ToArray();
        if (columns.Length < 2 || !string.Equals(columns[0], "token", StringComparison.OrdinalIgnoreCase))
        {
            throw new RoutingTraceFormatException(path, 1, $"expected the header 'token,layer_<L>,layer_<M>,...', got '{RoutingTrace.Shorten(header)}'.");
        }
        // The optional vocabulary column comes right after the token's.
        var first = string.Equals(columns[1], VocabularyColumn, StringComparison.OrdinalIgnoreCase) ? 2 : 1;
        if (first == 2 && columns.Length < 3)
        {
            throw new RoutingTraceFormatException(path, 1, $"expected the header 'token,vocab,layer_<L>,...', got '{RoutingTrace.Shorten(header)}'.");
        }
        var layers = new int[columns.Length - first];
        for (var i = first; i < columns.Length; i++)
        {
            var name = columns[i];
            if (!name.StartsWith("layer_", StringComparison.OrdinalIgnoreCase)
                || !int.TryParse(name.AsSpan(6), NumberStyles.Integer, CultureInfo.InvariantCulture, out layers[i - first]) || layers[i - first] < 0)
            {
                throw new RoutingTraceFormatException(path, 1, $"column {i + 1} must be named layer_<number>, got '{name}'.");
            }
            if (i > first && layers[i - first] <= layers[i - first - 1])
            {
                throw new RoutingTraceFormatException(path, 1, "layer columns must be in ascending order of layer.");
            }
        }
        var routes = new List<TokenRoute>();
        var lineNumber = 1;
        for (var line = reader.ReadLine(); line is not null; line = reader.ReadLine())
        {
            lineNumber++;
            if (line.Trim().Length == 0)
            {
                continue;
            }
            var cells = line.Split(',');
            if (cells.Length != columns.Length)
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"expected {columns.Length} fields, got {cells.Length}.");
            }
            if (!long.TryParse(cells[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var token))
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"token must be an integer, got '{cells[0]}'.");
            }
            var vocabulary = -1L;
            if (first == 2 && cells[1].Trim().Length > 0
                && (!long.TryParse(cells[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out vocabulary) || vocabulary < -1))
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"vocab must be a token id (an integer, -1 or empty when unknown), got '{cells[1]}'.");
            }
            var route = new List<LayerRoute>();
            for (var i = first; i < cells.Length; i++)
            {
                var pairs = cells[i].Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                if (pairs.Length == 0)
                {
                    continue;
                }
                var experts = new int[pairs.Length];
                var weights = new float[pairs.Length];
                for (var k = 0; k < pairs.Length; k++)
                {
                    var parts = pairs[k].Split(':');
                    if (parts.Length > 2 || !int.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out experts[k]) || experts[k] < 0)
                    {
                        throw new RoutingTraceFormatException(path, lineNumber, $"layer_{layers[i - first]}: '{pairs[k]}' is not expert[:weight].");
                    }
                    weights[k] = 1f / pairs.Length;
                    if (parts.Length == 2 && (!float.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out weights[k]) || !float.IsFinite(weights[k])))
                    {
                        throw new RoutingTraceFormatException(path, lineNumber, $"layer_{layers[i - first]}: weight '{parts[1]}' is not a number.");
                    }
                }
                route.Add(Checked(new LayerRoute(layers[i - first], experts, weights), path, lineNumber));
            }
            routes.Add(new TokenRoute(token, route) { Vocabulary = vocabulary });
        }
        return routes;
    }

    private static List<TokenRoute> ReadJsonLines(string first, TextReader reader, string path)
    {
        var routes = new List<TokenRoute>();
        var lineNumber = 0;
        for (var line = first; line is not null; line = reader.ReadLine())
        {
            lineNumber++;
            if (line.Trim().Length == 0)
            {
                continue;
            }
            try
            {
                using var doc = JsonDocument.Parse(line);
                var root = doc.RootElement;
                var token = root.GetProperty("token").GetInt64();
                var vocabulary = root.TryGetProperty("vocab", out var v) && v.ValueKind != JsonValueKind.Null ? v.GetInt64() : -1;
                if (vocabulary < -1)
                {
                    throw new RoutingTraceFormatException(path, lineNumber, $"'vocab' must be a token id or -1, got {vocabulary}.");
                }
                var layers = root.GetProperty("layers").EnumerateArray().Select(e => e.GetInt32()).ToArray();
                var experts = root.GetProperty("experts").EnumerateArray().Select(e => e.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
                var weights = root.TryGetProperty("weights", out var w) && w.ValueKind != JsonValueKind.Null
                    ? w.EnumerateArray().Select(e => e.EnumerateArray().Select(x => x.GetSingle()).ToArray()).ToArray()
                    : experts.Select(e => Enumerable.Repeat(1f / Math.Max(1, e.Length), e.Length).ToArray()).ToArray();
                if (experts.Length != layers.Length || weights.Length != layers.Length)
                {
                    throw new RoutingTraceFormatException(path, lineNumber, $"'layers' has {layers.Length} entries, 'experts' {experts.Length}, 'weights' {weights.Length}: they must match.");
                }
                var route = new List<LayerRoute>();
                for (var i = 0; i < layers.Length; i++)
                {
                    if (i > 0 && layers[i] <= layers[i - 1])
                    {
                        throw new RoutingTraceFormatException(path, lineNumber, "'layers' must be ascending.");
                    }
                    if (experts[i].Length > 0)
                    {
                        route.Add(Checked(new LayerRoute(layers[i], experts[i], weights[i]), path, lineNumber));
                    }
                }
                routes.Add(new TokenRoute(token, route) { Vocabulary = vocabulary });
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException and not RoutingTraceFormatException)
            {
                throw new RoutingTraceFormatException(path, lineNumber, $"not a token route ({e.Message}).");
            }
        }
        return routes;
    }

    private static LayerRoute Checked(LayerRoute route, string path, int line)
    {
        if (route.Layer < 0)
        {
            throw new RoutingTraceFormatException(path, line, $"layer {route.Layer} is negative.");
        }
        if (route.Weights.Length != route.Experts.Length)
        {
            throw new RoutingTraceFormatException(path, line, $"layer {route.Layer}: {route.Experts.Length} experts but {route.Weights.Length} weights.");
        }
        if (route.Experts.Any(e => e < 0))
        {
            throw new RoutingTraceFormatException(path, line, $"layer {route.Layer}: expert ids must be non-negative.");
        }
        if (route.Experts.Distinct().Count() != route.Experts.Length)
        {
            throw new RoutingTraceFormatException(path, line, $"layer {route.Layer}: an expert is listed twice.");
        }
        return route;
    }

    /// <summary>The optional CSV column of vocabulary ids.</summary>
    public const string VocabularyColumn = "vocab";

    /// <summary>
    /// Writes routes as CSV, one column per layer that any route names, and a <c>vocab</c> column when any route knows its
    /// vocabulary id.
    /// </summary>
    public static void WriteCsv(TextWriter writer, IReadOnlyCollection<TokenRoute> routes)
    {
        var layers = routes.SelectMany(r => r.Layers.Select(l => l.Layer)).Distinct().Order().ToArray();
        var vocabulary = routes.Any(r => r.Vocabulary >= 0);
        writer.WriteLine("token," + (vocabulary ? VocabularyColumn + "," : "") + string.Join(',', layers.Select(l => string.Create(CultureInfo.InvariantCulture, $"layer_{l}"))));
        var line = new StringBuilder();
        foreach (var route in routes)
        {
            line.Clear().Append(route.Token.ToString(CultureInfo.InvariantCulture));
            if (vocabulary)
            {
                line.Append(',').Append(Math.Max(-1, route.Vocabulary).ToString(CultureInfo.InvariantCulture));
            }
            var byLayer = route.Layers.ToDictionary(l => l.Layer);
            foreach (var layer in layers)
            {
                line.Append(',');
                if (byLayer.TryGetValue(layer, out var r))
                {
                    line.AppendJoin(' ', r.Experts.Select((e, k) => string.Create(CultureInfo.InvariantCulture, $"{e}:{r.Weights[k]:G6}")));
                }
            }
            writer.WriteLine(line);
        }
    }

    private static readonly JsonSerializerOptions SkipNulls = new() { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull };

    /// <summary>Writes routes as JSON lines (with <c>"vocab"</c> where a route knows its vocabulary id).</summary>
    public static void WriteJsonLines(TextWriter writer, IEnumerable<TokenRoute> routes)
    {
        foreach (var route in routes)
        {
            writer.WriteLine(JsonSerializer.Serialize(new
            {
                token = route.Token,
                vocab = route.Vocabulary >= 0 ? route.Vocabulary : (long?)null,
                layers = route.Layers.Select(l => l.Layer),
                experts = route.Layers.Select(l => l.Experts),
                weights = route.Layers.Select(l => l.Weights),
            }, SkipNulls));
        }
    }
}
