using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>Where a decentralized diffusion model's experts and router compute: in this process, or on grains across a cluster.</summary>
public interface IDiffusionBackend
{
    int Experts { get; }

    int ImageSize { get; }

    long ExpertFlopsPerImage { get; }

    long RouterFlopsPerImage { get; }

    /// <summary>Expert <paramref name="expert"/>'s velocity for a batch (it owns nothing of the inputs; the result is the caller's).</summary>
    Task<Tensor> VelocityAsync(int expert, Tensor noisy, Tensor time);

    /// <summary>The router's logits <c>[batch, experts]</c>.</summary>
    Task<Tensor> RouterLogitsAsync(Tensor noisy, Tensor time);
}

/// <summary>
/// Decentralized diffusion's ensemble: at every step the router's softmax over experts weighs the experts' flows,
/// <c>v(x, t) = Σ_k w_k(x, t) · v_k(x, t)</c>. With top-k only the k largest weights are kept and renormalised, and each
/// expert is sent only the images that chose it (one batch per expert per step); top-1 sends every image to one expert.
/// Counts expert and router image-evaluations, from which FLOPs follow.
/// </summary>
public sealed class DiffusionEnsemble(IDiffusionBackend backend)
{
    public IDiffusionBackend Backend { get; } = backend ?? throw new ArgumentNullException(nameof(backend));

    /// <summary>Images sent to experts so far (one image to one expert counts one).</summary>
    public long ExpertImageCalls { get; private set; }

    /// <summary>Images the router has scored so far.</summary>
    public long RouterImageCalls { get; private set; }

    /// <summary>FLOPs of the forward passes counted so far.</summary>
    public long Flops => ExpertImageCalls * Backend.ExpertFlopsPerImage + RouterImageCalls * Backend.RouterFlopsPerImage;

    /// <summary>Softmax of <paramref name="logits"/>, then only the top <paramref name="topK"/> kept and renormalised (all when topK ≥ experts).</summary>
    public static Tensor Weights(Tensor logits, int topK)
    {
        ArgumentNullException.ThrowIfNull(logits);
        if (topK < 1) throw new ArgumentOutOfRangeException(nameof(topK), $"top-k needs k ≥ 1, got {topK}.");
        using var scope = NewDisposeScope();
        var w = nn.functional.softmax(logits.to_type(ScalarType.Float32), 1);
        if (topK < logits.shape[1])
        {
            var (values, indices) = w.topk(topK, 1);
            w = zeros_like(w).scatter_(1, indices, values);
            w = w.div(w.sum(1, keepdim: true));
        }
        return w.MoveToOuterDisposeScope();
    }

    /// <summary>The mixed velocity at (x, t) with the given top-k (≥ experts: the full mixture).</summary>
    public async Task<Tensor> VelocityAsync(Tensor noisy, Tensor time, int topK)
    {
        ArgumentNullException.ThrowIfNull(noisy);
        ArgumentNullException.ThrowIfNull(time);
        var k = Backend.Experts;
        Tensor weights;
        if (k == 1)
        {
            weights = ones(noisy.shape[0], 1);
        }
        else
        {
            using var logits = await Backend.RouterLogitsAsync(noisy, time).ConfigureAwait(false);
            RouterImageCalls += noisy.shape[0];
            weights = Weights(logits, topK);
        }
        using (weights)
        {
            // Which images each expert serves, and each one's batch, sent to all experts at once.
            var calls = new List<(int Expert, Tensor Index, Task<Tensor> Velocity)>();
            var w = weights.data<float>().ToArray();
            var n = (int)noisy.shape[0];
            for (var e = 0; e < k; e++)
            {
                var rows = Enumerable.Range(0, n).Where(i => w[i * k + e] > 0).Select(i => (long)i).ToArray();
                if (rows.Length == 0) continue;
                var index = tensor(rows);
                using var xs = noisy.index_select(0, index);
                using var ts = time.index_select(0, index);
                ExpertImageCalls += rows.Length;
                calls.Add((e, index, Backend.VelocityAsync(e, xs, ts)));
            }
            var result = zeros_like(noisy);
            foreach (var (e, index, task) in calls)
            {
                using var v = await task.ConfigureAwait(false);
                using var we = weights.index_select(0, index).select(1, e).reshape(-1, 1, 1, 1);
                using var weighted = v.mul(we);
                result.index_add_(0, index, weighted, 1);
                index.Dispose();
            }
            return result;
        }
    }

    /// <summary>Generates <paramref name="count"/> images from the seed's noise with <paramref name="steps"/> Euler steps.</summary>
    public async Task<Tensor> SampleAsync(int count, int steps, int topK, long seed)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), $"At least one image, got {count}.");
        using var gen = new Generator((ulong)seed);
        using var noise = randn([count, 1, Backend.ImageSize, Backend.ImageSize], generator: gen);
        return await FlowMatching.SampleAsync(noise, steps, (x, t) => VelocityAsync(x, t, topK)).ConfigureAwait(false);
    }

    /// <summary>Mean flow-matching loss of the mixed velocity on images with the given noise and times.</summary>
    public async Task<double> LossAsync(Tensor clean, Tensor noise, Tensor time, int topK, int batch = 256)
    {
        ArgumentNullException.ThrowIfNull(clean);
        double total = 0;
        var n = clean.shape[0];
        for (long s = 0; s < n; s += batch)
        {
            var len = Math.Min(batch, n - s);
            using var x0 = clean.narrow(0, s, len);
            using var eps = noise.narrow(0, s, len);
            using var t = time.narrow(0, s, len);
            using var xt = FlowMatching.Interpolate(x0, eps, t);
            using var v = await VelocityAsync(xt, t, topK).ConfigureAwait(false);
            using var l = FlowMatching.Loss(v, x0, eps);
            total += l.item<float>() * len;
        }
        return total / n;
    }
}
