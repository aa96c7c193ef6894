using System.Collections.Concurrent;
using Microsoft.Extensions.Options;
using MoeGrains.Hosting;

namespace MoeGrains.Reliability;

/// <summary>
/// One circuit breaker per expert, kept by each silo that dispatches. After <see cref="MoeGrainsOptions.BreakerFailureThreshold"/>
/// consecutive failures (errors or missed deadlines) an expert is skipped (masked before routing) for
/// <see cref="MoeGrainsOptions.BreakerCooldownMs"/>; after that it is called again (half-open): one success closes the
/// breaker, one more failure opens it for another cooldown. A hung expert therefore costs one deadline per cooldown, not
/// one per request.
/// </summary>
public sealed class ExpertCircuitBreakers(IOptions<MoeGrainsOptions> options, TimeProvider time)
{
    private readonly ConcurrentDictionary<string, State> _states = new(StringComparer.Ordinal);

    private sealed class State
    {
        public int Failures;
        public DateTimeOffset OpenUntil;
    }

    /// <summary>Experts of a layer that must not be called now (open breakers).</summary>
    public IReadOnlyList<int> Blocked(string model, int layer, int experts)
    {
        var now = time.GetUtcNow();
        var blocked = new List<int>();
        for (var e = 0; e < experts; e++)
        {
            if (!_states.TryGetValue(Key(model, layer, e), out var s)) continue;
            lock (s)
            {
                if (s.Failures >= options.Value.BreakerFailureThreshold && now < s.OpenUntil)
                {
                    blocked.Add(e);
                }
            }
        }
        return blocked;
    }

    public void Record(string model, int layer, int expert, bool success)
    {
        var s = _states.GetOrAdd(Key(model, layer, expert), _ => new State());
        lock (s)
        {
            if (success)
            {
                s.Failures = 0;
                return;
            }
            s.Failures++;
            if (s.Failures >= options.Value.BreakerFailureThreshold)
            {
                s.OpenUntil = time.GetUtcNow().AddMilliseconds(options.Value.BreakerCooldownMs);
            }
        }
    }

    public bool IsOpen(string model, int layer, int expert) =>
        _states.TryGetValue(Key(model, layer, expert), out var s) && s.Failures >= options.Value.BreakerFailureThreshold && time.GetUtcNow() < s.OpenUntil;

    private static string Key(string model, int layer, int expert) => $"{model}/{layer}/{expert}";
}
