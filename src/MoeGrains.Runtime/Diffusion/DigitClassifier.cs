using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoeGrains.Diffusion;

/// <summary>
/// A small digit classifier trained here, for evaluation only: pixels → 128 → 64 (the feature space of the Fréchet
/// distance) → 10 classes.
/// </summary>
public sealed class DigitClassifier : IDisposable
{
    private readonly TorchSharp.Modules.Linear _l1, _l2, _head;

    public DigitClassifier(int pixels, long seed)
    {
        random.manual_seed(seed);
        _l1 = nn.Linear(pixels, 128);
        _l2 = nn.Linear(128, 64);
        _head = nn.Linear(64, 10);
    }

    /// <summary>Trains with Adam and cross-entropy on the images and labels (light noise as augmentation).</summary>
    public void Train(DigitImages data, int steps = 2000, int batch = 128, double lr = 2e-3, long seed = 7)
    {
        ArgumentNullException.ThrowIfNull(data);
        var parameters = _l1.parameters().Concat(_l2.parameters()).Concat(_head.parameters()).ToList();
        using var optimizer = optim.Adam(parameters, lr);
        using var gen = new Generator((ulong)seed);
        using var labels = tensor(data.Labels.Select(l => (long)l).ToArray());
        for (var step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            var idx = randint(data.Count, [batch], generator: gen);
            var x = data.Images.index_select(0, idx);
            x = x.add(randn(x.shape, generator: gen).mul(0.1));
            F.cross_entropy(Logits(x), labels.index_select(0, idx)).backward();
            optimizer.step();
        }
    }

    /// <summary>The 64 features of each image.</summary>
    public Tensor Features(Tensor images)
    {
        using var scope = NewDisposeScope();
        var x = images.reshape(images.shape[0], -1).to_type(ScalarType.Float32);
        return F.silu(_l2.forward(F.silu(_l1.forward(x)))).MoveToOuterDisposeScope();
    }

    public Tensor Logits(Tensor images)
    {
        using var scope = NewDisposeScope();
        return _head.forward(Features(images)).MoveToOuterDisposeScope();
    }

    public int[] Predict(Tensor images)
    {
        using var _ = no_grad();
        using var logits = Logits(images);
        using var arg = logits.argmax(1);
        return [.. arg.data<long>().ToArray().Select(v => (int)v)];
    }

    public double Accuracy(DigitImages data)
    {
        ArgumentNullException.ThrowIfNull(data);
        var p = Predict(data.Images);
        return p.Where((c, i) => c == data.Labels[i]).Count() / (double)data.Count;
    }

    /// <summary>
    /// The share of the 10 classes that are present among predictions: a class counts when it gets at least a quarter
    /// of its uniform share (2.5% of the images).
    /// </summary>
    public static double ClassCoverage(IReadOnlyList<int> predicted)
    {
        ArgumentNullException.ThrowIfNull(predicted);
        if (predicted.Count == 0) return 0;
        var counts = new int[10];
        foreach (var c in predicted) counts[c]++;
        return counts.Count(c => c >= 0.25 * predicted.Count / 10.0) / 10.0;
    }

    public void Dispose()
    {
        _l1.Dispose();
        _l2.Dispose();
        _head.Dispose();
    }
}

/// <summary>The Fréchet distance between Gaussians fitted to two feature sets (as in FID, on a small classifier's features).</summary>
public static class Frechet
{
    public static double Distance(Tensor a, Tensor b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        using var scope = NewDisposeScope();
        var (m1, s1) = Moments(a.to_type(ScalarType.Float64));
        var (m2, s2) = Moments(b.to_type(ScalarType.Float64));
        var root1 = SqrtPsd(s1);
        var middle = root1.matmul(s2).matmul(root1);
        middle = middle.add(middle.t()).div(2);
        var traceRoot = linalg.eigvalsh(middle).clamp_min(0).sqrt().sum();
        var d = m1.sub(m2).square().sum().add(s1.trace()).add(s2.trace()).sub(traceRoot.mul(2));
        return d.item<double>();
    }

    private static (Tensor Mean, Tensor Cov) Moments(Tensor x)
    {
        var mean = x.mean([0]);
        var c = x.sub(mean);
        return (mean, c.t().matmul(c).div(Math.Max(1, x.shape[0] - 1)));
    }

    private static Tensor SqrtPsd(Tensor s)
    {
        var (values, vectors) = linalg.eigh(s.add(s.t()).div(2));
        return vectors.mul(values.clamp_min(0).sqrt().unsqueeze(0)).matmul(vectors.t());
    }
}
