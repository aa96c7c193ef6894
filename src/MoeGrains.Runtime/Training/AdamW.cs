using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Training;

/// <summary>
/// AdamW (decoupled weight decay, Loshchilov and Hutter) over named parameters, its moments kept by parameter name so
/// that they are saved with the checkpoint and a run resumes exactly. Decay applies to matrices only, not to norms.
/// </summary>
public sealed class AdamW : IDisposable
{
    private readonly List<(string Name, Parameter Parameter, Tensor ExpAvg, Tensor ExpAvgSq)> _state = [];

    public AdamW(IEnumerable<(string Name, Parameter Parameter)> parameters, double beta1 = 0.9, double beta2 = 0.95, double epsilon = 1e-8, double weightDecay = 0.1)
    {
        var seen = new HashSet<IntPtr>();
        foreach (var (name, p) in parameters)
        {
            if (!p.requires_grad || !seen.Add(p.Handle))
            {
                continue; // frozen, or the same tensor under a second name (tied weights)
            }
            _state.Add((name, p, zeros_like(p).DetachFromDisposeScope(), zeros_like(p).DetachFromDisposeScope()));
        }
        (Beta1, Beta2, Epsilon, WeightDecay) = (beta1, beta2, epsilon, weightDecay);
    }

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Epsilon { get; }
    public double WeightDecay { get; }

    /// <summary>Updates taken so far.</summary>
    public long Steps { get; private set; }

    public void Step(double learningRate)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        Steps++;
        var bc1 = 1 - Math.Pow(Beta1, Steps);
        var bc2 = 1 - Math.Pow(Beta2, Steps);
        // Scalars held for the whole step (a temporary one can be finalized while libtorch reads it).
        using Scalar beta1 = Beta1, oneMinusBeta1 = 1 - Beta1, beta2 = Beta2, oneMinusBeta2 = 1 - Beta2,
            decay = 1 - learningRate * WeightDecay, rootBc2 = Math.Sqrt(bc2), epsilon = Epsilon, stepSize = -learningRate / bc1;
        foreach (var (_, p, m, v) in _state)
        {
            var g = p.grad;
            if (g is null)
            {
                continue;
            }
            m.mul_(beta1).add_(g, oneMinusBeta1);
            v.mul_(beta2).addcmul_(g, g, oneMinusBeta2);
            if (p.dim() >= 2 && WeightDecay > 0)
            {
                p.mul_(decay);
            }
            var denom = v.sqrt().div_(rootBc2).add_(epsilon, Scalars.One);
            p.addcdiv_(m, denom, stepSize);
        }
    }

    /// <summary>The moments as named tensors (<c>exp_avg.NAME</c>, <c>exp_avg_sq.NAME</c>), to save.</summary>
    public IEnumerable<KeyValuePair<string, Tensor>> StateDict()
    {
        foreach (var (name, _, m, v) in _state)
        {
            yield return new("exp_avg." + name, m);
            yield return new("exp_avg_sq." + name, v);
        }
    }

    /// <summary>Restores the moments and the step count saved by <see cref="StateDict"/>.</summary>
    public void Load(IReadOnlyDictionary<string, Tensor> state, long steps)
    {
        using var _ = no_grad();
        foreach (var (name, _, m, v) in _state)
        {
            m.copy_(Find(state, "exp_avg." + name, m));
            v.copy_(Find(state, "exp_avg_sq." + name, v));
        }
        Steps = steps;
    }

    private static Tensor Find(IReadOnlyDictionary<string, Tensor> state, string name, Tensor like) =>
        state.TryGetValue(name, out var t) && t.shape.SequenceEqual(like.shape)
            ? t
            : throw new InvalidDataException($"The training state has no tensor '{name}' of shape [{string.Join(", ", like.shape)}].");

    public void Dispose()
    {
        foreach (var (_, _, m, v) in _state)
        {
            m.Dispose();
            v.Dispose();
        }
        _state.Clear();
    }
}
