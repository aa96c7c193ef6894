namespace MoeGrains.Placement;

/// <summary>
/// Collects per-token routes as layers route them, for a sampled share of tokens, up to a bound. Whether a token is
/// sampled depends only on its id (a hash), so every layer, on every silo, records the same tokens and a sampled token's
/// route is complete. Export with <see cref="Routes"/> (then <see cref="TokenRouteFile"/>) or <see cref="ToTrace"/>.
/// </summary>
public sealed class RoutingTraceRecorder
{
    public const double DEFAULT_SAMPLING_RATE = 0.01;
    public const int DEFAULT_MAX_TOKENS = 100_000;

    private readonly Lock _lock = new();
    private readonly Dictionary<long, SortedList<int, LayerRoute>> _routes = [];
    private readonly Dictionary<long, long> _vocabulary = [];
    private readonly ulong _threshold;
    private readonly ulong _salt;

    /// <param name="samplingRate">Share of tokens recorded, 0..1. Default 1%.</param>
    /// <param name="maxTokens">Tokens kept at most; later new tokens are counted in <see cref="Dropped"/>. Default 100,000.</param>
    /// <param name="salt">Changes which tokens are sampled (the same salt on every silo keeps routes complete).</param>
    public RoutingTraceRecorder(double samplingRate = DEFAULT_SAMPLING_RATE, int maxTokens = DEFAULT_MAX_TOKENS, ulong salt = 0)
    {
        if (!(samplingRate is >= 0 and <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(samplingRate), samplingRate, "The sampling rate must be between 0 and 1.");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(maxTokens);
        SamplingRate = samplingRate;
        MaxTokens = maxTokens;
        _threshold = samplingRate >= 1 ? ulong.MaxValue : (ulong)(samplingRate * ulong.MaxValue);
        _salt = salt;
    }

    public double SamplingRate { get; }

    public int MaxTokens { get; }

    /// <summary>Sampled tokens not kept because the recorder was full.</summary>
    public long Dropped { get; private set; }

    public int Count
    {
        get
        {
            lock (_lock) return _routes.Count;
        }
    }

    public bool IsSampled(long token) => SamplingRate >= 1 || (SamplingRate > 0 && Mix((ulong)token ^ _salt) < _threshold);

    /// <summary>
    /// Records one token's experts (and router weights) at one layer, if the token is sampled; with its id in the model's
    /// vocabulary when known (<paramref name="vocabulary"/> ≥ 0).
    /// </summary>
    public void Record(long token, int layer, ReadOnlySpan<int> experts, ReadOnlySpan<float> weights, long vocabulary = -1)
    {
        if (experts.Length != weights.Length)
        {
            throw new ArgumentException($"{experts.Length} experts but {weights.Length} weights.");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        if (!IsSampled(token))
        {
            return;
        }
        var route = new LayerRoute(layer, experts.ToArray(), weights.ToArray());
        lock (_lock)
        {
            if (!_routes.TryGetValue(token, out var layers))
            {
                if (_routes.Count >= MaxTokens)
                {
                    Dropped++;
                    return;
                }
                _routes[token] = layers = [];
            }
            layers[layer] = route;
            if (vocabulary >= 0)
            {
                _vocabulary[token] = vocabulary;
            }
        }
    }

    /// <summary>
    /// Records a routed batch in the layout routers produce: token <c>t</c>'s choices are
    /// <c>experts[t * k .. t * k + k)</c> with their weights at the same positions; <paramref name="vocabulary"/>, when
    /// not empty, holds the tokens' ids in the model's vocabulary (one per token).
    /// </summary>
    public void RecordBatch(int layer, ReadOnlySpan<long> tokens, int k, ReadOnlySpan<int> experts, ReadOnlySpan<float> weights,
        ReadOnlySpan<long> vocabulary = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(k, 1);
        if (experts.Length != tokens.Length * k || weights.Length != experts.Length)
        {
            throw new ArgumentException($"{tokens.Length} tokens with k={k} need {tokens.Length * k} experts and weights, got {experts.Length} and {weights.Length}.");
        }
        if (!vocabulary.IsEmpty && vocabulary.Length != tokens.Length)
        {
            throw new ArgumentException($"{tokens.Length} tokens but {vocabulary.Length} vocabulary ids.");
        }
        for (var t = 0; t < tokens.Length; t++)
        {
            Record(tokens[t], layer, experts.Slice(t * k, k), weights.Slice(t * k, k), vocabulary.IsEmpty ? -1 : vocabulary[t]);
        }
    }

    /// <summary>A snapshot of the recorded routes, tokens and layers ascending.</summary>
    public IReadOnlyList<TokenRoute> Routes()
    {
        lock (_lock)
        {
            return [.. _routes.OrderBy(r => r.Key).Select(r => new TokenRoute(r.Key, [.. r.Value.Values]) { Vocabulary = _vocabulary.GetValueOrDefault(r.Key, -1) })];
        }
    }

    /// <summary>The recorded routes as transition counts (see <see cref="RoutingTrace.FromTokenRoutes"/>).</summary>
    public RoutingTrace ToTrace(int? experts = null) => RoutingTrace.FromTokenRoutes(Routes(), experts);

    public void Clear()
    {
        lock (_lock)
        {
            _routes.Clear();
            _vocabulary.Clear();
            Dropped = 0;
        }
    }

    // SplitMix64's finaliser: consecutive token ids map to well-spread values.
    private static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
