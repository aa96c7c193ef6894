using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>How the training images are split into the experts' disjoint partitions.</summary>
public static class Partitioning
{
    public const string KMeans = "kmeans";
    public const string ByClass = "class";

    /// <summary>
    /// k-means (k-means++ seeding, Lloyd iterations) on the rows of <paramref name="features"/> <c>[n, d]</c>: the
    /// cluster of each row. Deterministic for a seed. An empty cluster is re-seeded with the point farthest from its centre.
    /// </summary>
    public static int[] KMeansClusters(Tensor features, int k, int seed, int iterations = 30)
    {
        ArgumentNullException.ThrowIfNull(features);
        var n = (int)features.shape[0];
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), $"k-means needs 1..{n} clusters, got {k}.");
        using var scope = NewDisposeScope();
        var x = features.to_type(ScalarType.Float64).reshape(n, -1);
        var rng = new Random(seed);
        var centres = new List<Tensor> { x[rng.Next(n)] };
        var best = cdist(x, centres[0].unsqueeze(0)).squeeze(1).square();
        while (centres.Count < k)
        {
            // k-means++: the next centre is drawn with probability proportional to the squared distance.
            var d2 = best.data<double>().ToArray();
            var total = d2.Sum();
            var r = rng.NextDouble() * total;
            var pick = 0;
            for (var acc = 0.0; pick < n - 1; pick++)
            {
                acc += d2[pick];
                if (acc >= r) break;
            }
            centres.Add(x[pick]);
            best = minimum(best, cdist(x, x[pick].unsqueeze(0)).squeeze(1).square());
        }
        var c = stack(centres);
        var assign = new long[n];
        for (var it = 0; it < iterations; it++)
        {
            var dist = cdist(x, c);
            var next = dist.argmin(1).data<long>().ToArray();
            var changed = !next.SequenceEqual(assign) || it == 0;
            assign = next;
            var index = tensor(assign);
            var sums = zeros(k, x.shape[1], dtype: ScalarType.Float64).index_add_(0, index, x, 1);
            var counts = bincount(index, minlength: k).to_type(ScalarType.Float64);
            for (var j = 0; j < k; j++)
            {
                if (counts[j].item<double>() == 0)
                {
                    var far = dist.min(1).values.argmax().item<long>();
                    sums[j] = x[far];
                    counts[j] = 1.0;
                }
            }
            c = sums.div(counts.unsqueeze(1));
            if (!changed) break;
        }
        return [.. assign.Select(a => (int)a)];
    }

    /// <summary>Class partitions: digit <c>c</c> goes to partition <c>c mod k</c>.</summary>
    public static int[] ByClassPartitions(IReadOnlyList<int> labels, int k)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), $"At least one partition is needed, got {k}.");
        return [.. labels.Select(l => l % k)];
    }

    /// <summary>The partition of each training image by <paramref name="method"/> (<see cref="KMeans"/> on pixels, or <see cref="ByClass"/>).</summary>
    public static int[] Partition(DigitImages images, string method, int k, int seed)
    {
        ArgumentNullException.ThrowIfNull(images);
        return method switch
        {
            KMeans => KMeansClusters(images.Images.reshape(images.Count, -1), k, seed),
            ByClass => ByClassPartitions(images.Labels, k),
            _ => throw new ArgumentException($"Unknown partitioning '{method}' (known: {KMeans}, {ByClass}).", nameof(method)),
        };
    }

    /// <summary>
    /// The partition of each image of <paramref name="images"/> (held-out images the partitioning never saw): for
    /// <see cref="KMeans"/> the nearest partition centre (the mean of its training members' pixels, which is where
    /// k-means converged), for <see cref="ByClass"/> the digit mod k.
    /// </summary>
    public static int[] Assign(DigitImages images, DigitImages train, IReadOnlyList<int> partition, string method, int k)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(partition);
        if (partition.Count != train.Count) throw new ArgumentException($"{partition.Count} partition labels for {train.Count} training images.", nameof(partition));
        if (method == ByClass) return ByClassPartitions(images.Labels, k);
        if (method != KMeans) throw new ArgumentException($"Unknown partitioning '{method}' (known: {KMeans}, {ByClass}).", nameof(method));
        using var scope = NewDisposeScope();
        var x = train.Images.reshape(train.Count, -1).to_type(ScalarType.Float64);
        var index = tensor(partition.Select(p => (long)p).ToArray());
        var sums = zeros(k, x.shape[1], dtype: ScalarType.Float64).index_add_(0, index, x, 1);
        var counts = bincount(index, minlength: k).to_type(ScalarType.Float64).clamp_min(1);
        var centres = sums.div(counts.unsqueeze(1));
        var y = images.Images.reshape(images.Count, -1).to_type(ScalarType.Float64);
        return [.. cdist(y, centres).argmin(1).data<long>().ToArray().Select(a => (int)a)];
    }

    /// <summary>The indices of each partition, in order.</summary>
    public static int[][] Members(IReadOnlyList<int> partition, int k) =>
        [.. Enumerable.Range(0, k).Select(j => Enumerable.Range(0, partition.Count).Where(i => partition[i] == j).ToArray())];
}
