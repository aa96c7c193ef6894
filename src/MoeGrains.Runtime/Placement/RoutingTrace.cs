using System.Globalization;

namespace MoeGrains.Placement;

/// <summary>
/// Counted routing transitions between traced layers: for each pair of consecutive traced layers, how many times a token
/// routed to expert <c>i</c> at the first went to expert <c>p</c> at the second. Built from per-token routes
/// (<see cref="TokenRouteFile"/>) or read from a cross-layer counts file (<see cref="CrossLayerCountsFile"/>).
/// </summary>
public sealed class RoutingTrace
{
    public RoutingTrace(int experts, IEnumerable<LayerTransition> transitions)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(experts, 1);
        Experts = experts;
        Transitions = [.. transitions.OrderBy(t => t.LayerFrom).ThenBy(t => t.LayerTo)];
        foreach (var t in Transitions)
        {
            if (t.Counts.Length != experts * experts)
            {
                throw new ArgumentException($"Transition {t.LayerFrom}->{t.LayerTo} has {t.Counts.Length} counts, not {experts}x{experts}.", nameof(transitions));
            }
        }
        Layers = [.. Transitions.SelectMany(t => new[] { t.LayerFrom, t.LayerTo }).Distinct().Order()];
    }

    /// <summary>Experts per layer (the same in every layer).</summary>
    public int Experts { get; }

    /// <summary>The traced layers, ascending.</summary>
    public IReadOnlyList<int> Layers { get; }

    public IReadOnlyList<LayerTransition> Transitions { get; }

    /// <summary>All counted transitions (for top-k routes, every pair of experts counts once).</summary>
    public double Total => Transitions.Sum(t => t.Total);

    /// <summary>
    /// Reads a trace, choosing the form by its header: <c>model,selection,domain,layer_from,...</c> is the cross-layer
    /// counts form, <c>token,...</c> or a first line starting with <c>{</c> is the per-token routes form.
    /// </summary>
    public static RoutingTrace Load(string path, RoutingTraceFilter? filter = null, int? experts = null)
    {
        using var reader = new StreamReader(path);
        var first = reader.ReadLine() ?? throw new RoutingTraceFormatException(path, 1, "the file is empty.");
        reader.BaseStream.Seek(0, SeekOrigin.Begin);
        reader.DiscardBufferedData();
        var head = first.TrimStart('\uFEFF').Trim();
        if (head.StartsWith("model,", StringComparison.OrdinalIgnoreCase))
        {
            return CrossLayerCountsFile.Read(reader, path, filter, experts);
        }
        if (head.StartsWith("token", StringComparison.OrdinalIgnoreCase) || head.StartsWith('{'))
        {
            return FromTokenRoutes(TokenRouteFile.Read(reader, path), experts);
        }
        throw new RoutingTraceFormatException(path, 1,
            $"unknown trace form: expected a header 'model,selection,domain,layer_from,layer_to,expert_from,expert_to,count', 'token,layer_<L>,...' or JSON lines, got '{Shorten(head)}'.");
    }

    /// <summary>
    /// Counts the transitions of per-token routes: between each two consecutive layers a token was traced at, every pair
    /// (expert at the first, expert at the second) counts once, whatever the router weights.
    /// </summary>
    public static RoutingTrace FromTokenRoutes(IEnumerable<TokenRoute> routes, int? experts = null)
    {
        var matrices = new Dictionary<(int, int), Dictionary<(int, int), double>>();
        var maxExpert = -1;
        foreach (var route in routes)
        {
            for (var i = 0; i < route.Layers.Count; i++)
            {
                foreach (var e in route.Layers[i].Experts)
                {
                    maxExpert = Math.Max(maxExpert, e);
                }
                if (i == 0)
                {
                    continue;
                }
                var (from, to) = (route.Layers[i - 1], route.Layers[i]);
                if (!matrices.TryGetValue((from.Layer, to.Layer), out var counts))
                {
                    matrices[(from.Layer, to.Layer)] = counts = [];
                }
                foreach (var a in from.Experts)
                {
                    foreach (var b in to.Experts)
                    {
                        counts[(a, b)] = counts.GetValueOrDefault((a, b)) + 1;
                    }
                }
            }
        }
        var n = experts ?? maxExpert + 1;
        if (n < 1)
        {
            throw new ArgumentException("The routes name no expert.", nameof(routes));
        }
        if (maxExpert >= n)
        {
            throw new ArgumentException($"The routes name expert {maxExpert}, but the model has {n} experts per layer.", nameof(routes));
        }
        return new RoutingTrace(n, matrices.Select(m =>
        {
            var counts = new double[n * n];
            foreach (var ((a, b), c) in m.Value)
            {
                counts[a * n + b] = c;
            }
            return new LayerTransition(m.Key.Item1, m.Key.Item2, counts);
        }));
    }

    internal static string Shorten(string text) => text.Length <= 80 ? text : text[..77] + "...";
}

/// <summary>Transition counts from one traced layer to the next: <c>Counts[from * experts + to]</c>.</summary>
public sealed record LayerTransition(int LayerFrom, int LayerTo, double[] Counts)
{
    public double Total => Counts.Sum();

    public int Experts => (int)Math.Round(Math.Sqrt(Counts.Length));

    /// <summary>
    /// The conditional affinity <c>A[i][p] = P(expert p at LayerTo | expert i at LayerFrom)</c>. Every row sums to one; an
    /// expert never seen at <c>LayerFrom</c> gets the uniform row (nothing is known about where its tokens go).
    /// </summary>
    public double[][] Affinity()
    {
        var n = Experts;
        var rows = new double[n][];
        for (var i = 0; i < n; i++)
        {
            var row = Counts.AsSpan(i * n, n);
            var sum = 0.0;
            foreach (var c in row) sum += c;
            rows[i] = new double[n];
            for (var p = 0; p < n; p++)
            {
                rows[i][p] = sum > 0 ? row[p] / sum : 1.0 / n;
            }
        }
        return rows;
    }

    /// <summary>How concentrated the affinity is: the mean over source experts of <c>max_p A[i][p]</c> (1/experts means none).</summary>
    public double Concentration() => Affinity().Average(row => row.Max());
}

/// <summary>Which rows of a cross-layer counts file to use; <c>null</c> accepts every value (domains are summed).</summary>
public sealed record RoutingTraceFilter(string? Model = null, string? Selection = null, string? Domain = null);

/// <summary>A trace file that cannot be read; the message names the file and the line.</summary>
public sealed class RoutingTraceFormatException : FormatException
{
    public RoutingTraceFormatException(string path, int line, string message)
        : base($"{path}, line {line.ToString(CultureInfo.InvariantCulture)}: {message}")
    {
        Path = path;
        Line = line;
    }

    public string Path { get; } = "";

    public int Line { get; }
}
