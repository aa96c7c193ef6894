using MoeGrains.Placement;

namespace MoeGrains.Offload;

/// <summary>One token's routing path: its token id (-1 when unknown) and the experts it was routed to at each layer.</summary>
public sealed record RoutePath(long TokenId, int[][] Experts);

/// <summary>
/// Predicts the experts a token will need in the coming layers, from routing traces (ExpertFlow's routing-path
/// predictor, EdgeMoE's activation table): counted tables of P(expert at layer l+1 | expert at layer l), P(expert at
/// layer l | token id) and P(expert at layer l), with add-one smoothing. Once a token's experts at layer l are known
/// (the router has run), its next layer is predicted from them, mixed with its token's own table when the token was
/// seen in the traces; layers further ahead are predicted from the token alone, else from the marginal.
/// Probabilities are per token: the chance that the expert is among the token's k.
/// </summary>
public sealed class RoutingPathPredictor
{
    private readonly double[][] _marginal;          // [layer][expert] counts
    private readonly double[][][] _transition;      // [layer][from][to] counts, layer -> layer + 1
    private readonly Dictionary<long, double[][]> _byToken = []; // token -> [layer][expert] counts

    public RoutingPathPredictor(int layers, int experts, int topK)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(layers, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(experts, 1);
        Layers = layers;
        Experts = experts;
        TopK = Math.Clamp(topK, 1, experts);
        _marginal = [.. Enumerable.Range(0, layers).Select(_ => new double[experts])];
        _transition = [.. Enumerable.Range(0, Math.Max(0, layers - 1)).Select(_ => Enumerable.Range(0, experts).Select(_ => new double[experts]).ToArray())];
    }

    public int Layers { get; }

    public int Experts { get; }

    public int TopK { get; }

    /// <summary>Weight of the token's own table against the previous layer's transition when both are known.</summary>
    public double TokenWeight { get; init; } = 0.5;

    /// <summary>Paths counted so far.</summary>
    public long Observed { get; private set; }

    /// <summary>Traced tokens left out by <see cref="FromTokenRoutes"/> because their route missed a layer.</summary>
    public long Skipped { get; private set; }

    /// <summary>Counted paths whose token's vocabulary id was known (the per-token tables' evidence).</summary>
    public long ObservedWithToken { get; private set; }

    /// <summary>Distinct token ids with their own table.</summary>
    public int TokensKnown => _byToken.Count;

    /// <summary>Counts one token's path (every layer's experts, and each pair of experts in consecutive layers).</summary>
    public void Observe(RoutePath path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (path.Experts.Length != Layers)
        {
            throw new ArgumentException($"A path through {path.Experts.Length} layers does not fit a predictor of {Layers}.", nameof(path));
        }
        double[][]? own = null;
        if (path.TokenId >= 0 && !_byToken.TryGetValue(path.TokenId, out own))
        {
            _byToken[path.TokenId] = own = [.. Enumerable.Range(0, Layers).Select(_ => new double[Experts])];
        }
        for (var l = 0; l < Layers; l++)
        {
            foreach (var e in path.Experts[l])
            {
                Check(e);
                _marginal[l][e]++;
                if (own is not null) own[l][e]++;
                if (l + 1 < Layers)
                {
                    foreach (var next in path.Experts[l + 1])
                    {
                        Check(next);
                        _transition[l][e][next]++;
                    }
                }
            }
        }
        Observed++;
        if (own is not null) ObservedWithToken++;
    }

    private void Check(int e)
    {
        if ((uint)e >= (uint)Experts)
        {
            throw new ArgumentOutOfRangeException(nameof(e), e, $"Expert {e} does not exist (the predictor has {Experts}).");
        }
    }

    public static RoutingPathPredictor Train(IEnumerable<RoutePath> paths, int layers, int experts, int topK)
    {
        var predictor = new RoutingPathPredictor(layers, experts, topK);
        foreach (var p in paths) predictor.Observe(p);
        return predictor;
    }

    /// <summary>
    /// A predictor from per-token routes (the cluster's routing traces, <see cref="TokenRouteFile"/>): each token traced at
    /// every layer <c>0..layers-1</c> becomes a <see cref="RoutePath"/> of its vocabulary id (<see cref="TokenRoute.Vocabulary"/>,
    /// -1 when unknown) and its experts per layer; a token that misses a layer is left out and counted in
    /// <see cref="Skipped"/> (<see cref="Observed"/> counts those used). A route naming a layer or an expert the model does
    /// not have is an error: the trace is of another model.
    /// </summary>
    public static RoutingPathPredictor FromTokenRoutes(IEnumerable<TokenRoute> routes, int layers, int experts, int topK)
    {
        ArgumentNullException.ThrowIfNull(routes);
        var predictor = new RoutingPathPredictor(layers, experts, topK);
        foreach (var route in routes)
        {
            var path = new int[layers][];
            foreach (var l in route.Layers)
            {
                if ((uint)l.Layer >= (uint)layers)
                {
                    throw new ArgumentException($"Token {route.Token} is traced at layer {l.Layer}; the model has {layers} layers (0..{layers - 1}).", nameof(routes));
                }
                foreach (var e in l.Experts)
                {
                    if ((uint)e >= (uint)experts)
                    {
                        throw new ArgumentException($"Token {route.Token} is routed to expert {e} at layer {l.Layer}; the model has {experts} experts per layer.", nameof(routes));
                    }
                }
                path[l.Layer] = l.Experts;
            }
            if (path.Any(p => p is null || p.Length == 0))
            {
                predictor.Skipped++;
                continue;
            }
            predictor.Observe(new RoutePath(route.Vocabulary >= 0 ? route.Vocabulary : -1, path));
        }
        return predictor;
    }

    /// <summary>
    /// A predictor from a counted trace (<see cref="CrossLayerCountsFile"/>, e.g. the Mixtral statistics): the traced
    /// layers, ascending, become layers 0, 1, ...; marginals are the transitions' row and column sums.
    /// </summary>
    public static RoutingPathPredictor FromTrace(RoutingTrace trace, int topK)
    {
        ArgumentNullException.ThrowIfNull(trace);
        var index = trace.Layers.Select((layer, i) => (layer, i)).ToDictionary(p => p.layer, p => p.i);
        var predictor = new RoutingPathPredictor(trace.Layers.Count, trace.Experts, topK);
        var n = trace.Experts;
        foreach (var t in trace.Transitions)
        {
            var from = index[t.LayerFrom];
            var to = index[t.LayerTo];
            if (to != from + 1)
            {
                continue;
            }
            for (var a = 0; a < n; a++)
            {
                for (var b = 0; b < n; b++)
                {
                    var c = t.Counts[a * n + b];
                    predictor._transition[from][a][b] += c;
                    if (from == 0) predictor._marginal[0][a] += c;
                    predictor._marginal[to][b] += c;
                }
            }
        }
        return predictor;
    }

    /// <summary>P(expert among the token's k at <paramref name="layer"/>) with nothing else known.</summary>
    public double[] Marginal(int layer) => ToProbabilities(_marginal[layer]);

    /// <summary>P(expert among the token's k at <paramref name="layer"/>) knowing only the token (its table, else the marginal).</summary>
    public double[] ForToken(long tokenId, int layer) =>
        tokenId >= 0 && _byToken.TryGetValue(tokenId, out var own) && own[layer].Sum() > 0 ? ToProbabilities(own[layer]) : Marginal(layer);

    /// <summary>
    /// P(expert among the token's k at layer <paramref name="layer"/> + 1), knowing its experts at <paramref name="layer"/>
    /// (and its token id, when ≥ 0).
    /// </summary>
    public double[] Next(int layer, ReadOnlySpan<int> experts, long tokenId = -1)
    {
        if ((uint)(layer + 1) >= (uint)Layers)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"Layer {layer} has no next layer (the predictor has {Layers}).");
        }
        var mix = new double[Experts];
        var used = 0;
        foreach (var a in experts)
        {
            if (a < 0) continue;
            Check(a);
            var row = ToProbabilities(_transition[layer][a]);
            for (var b = 0; b < Experts; b++) mix[b] += row[b];
            used++;
        }
        if (used == 0)
        {
            return ForToken(tokenId, layer + 1);
        }
        for (var b = 0; b < Experts; b++) mix[b] /= used;
        if (tokenId >= 0 && _byToken.TryGetValue(tokenId, out var own) && own[layer + 1].Sum() > 0)
        {
            var t = ToProbabilities(own[layer + 1]);
            for (var b = 0; b < Experts; b++) mix[b] = (1 - TokenWeight) * mix[b] + TokenWeight * t[b];
        }
        return mix;
    }

    /// <summary>A token's predicted path before it runs (from its id alone): [layer][expert] probabilities, for scheduling.</summary>
    public double[][] Path(long tokenId) => [.. Enumerable.Range(0, Layers).Select(l => ForToken(tokenId, l))];

    // Smoothed counts → the probability that each expert is among k: k × share, capped at 1.
    private double[] ToProbabilities(double[] counts)
    {
        var total = counts.Sum() + counts.Length;
        var p = new double[counts.Length];
        for (var i = 0; i < p.Length; i++)
        {
            p[i] = Math.Min(1, TopK * (counts[i] + 1) / total);
        }
        return p;
    }

    /// <summary>P(any of several tokens uses each expert), the tokens taken as independent.</summary>
    public static double[] Union(IEnumerable<double[]> perToken, int experts)
    {
        var none = Enumerable.Repeat(1.0, experts).ToArray();
        foreach (var p in perToken)
        {
            for (var e = 0; e < experts; e++) none[e] *= 1 - p[e];
        }
        return [.. none.Select(n => 1 - n)];
    }
}
