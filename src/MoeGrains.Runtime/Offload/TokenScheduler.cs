namespace MoeGrains.Offload;

/// <summary>
/// ExpertFlow's token scheduler: splits a pool of waiting tokens (say, the next token of each of many concurrent
/// requests) into batches of at most <c>batchSize</c> so that each batch touches fewer distinct experts. Each token
/// comes with its predicted path (P(expert) per layer, flattened); batches are filled greedily: the oldest waiting token
/// opens a batch, then the token that adds the fewest expected new experts to the batch joins it, until it is full.
/// Every token is placed exactly once; the order inside the pool is kept when paths do not differ.
/// </summary>
public static class TokenScheduler
{
    public static int[][] Group(IReadOnlyList<double[]> paths, int batchSize)
    {
        ArgumentNullException.ThrowIfNull(paths);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (paths.Count == 0)
        {
            return [];
        }
        var width = paths[0].Length;
        if (paths.Any(p => p.Length != width))
        {
            throw new ArgumentException("Every predicted path must have the same length.", nameof(paths));
        }
        var waiting = Enumerable.Range(0, paths.Count).ToList();
        var batches = new List<int[]>();
        while (waiting.Count > 0)
        {
            var batch = new List<int> { waiting[0] };
            waiting.RemoveAt(0);
            var covered = (double[])paths[batch[0]].Clone();
            while (batch.Count < batchSize && waiting.Count > 0)
            {
                var best = 0;
                var bestCost = double.PositiveInfinity;
                for (var i = 0; i < waiting.Count; i++)
                {
                    var p = paths[waiting[i]];
                    double cost = 0;
                    for (var j = 0; j < width; j++) cost += p[j] * (1 - covered[j]);
                    if (cost < bestCost - 1e-12)
                    {
                        bestCost = cost;
                        best = i;
                    }
                }
                var chosen = waiting[best];
                waiting.RemoveAt(best);
                batch.Add(chosen);
                var q = paths[chosen];
                for (var j = 0; j < width; j++) covered[j] = 1 - (1 - covered[j]) * (1 - q[j]);
            }
            batches.Add([.. batch]);
        }
        return [.. batches];
    }

    /// <summary>Consecutive batches in pool order, the baseline the scheduler is compared with.</summary>
    public static int[][] InOrder(int count, int batchSize) =>
        [.. Enumerable.Range(0, count).Chunk(Math.Max(1, batchSize))];

    /// <summary>Mean over batches and layers of the distinct experts a batch touches, from the tokens' actual paths ([layer][k]).</summary>
    public static double DistinctExpertsPerBatchLayer(IReadOnlyList<int[]> batches, IReadOnlyList<int[][]> actualPaths)
    {
        double total = 0;
        var n = 0;
        foreach (var batch in batches)
        {
            var layers = actualPaths[batch[0]].Length;
            for (var l = 0; l < layers; l++)
            {
                total += batch.SelectMany(t => actualPaths[t][l]).Where(e => e >= 0).Distinct().Count();
                n++;
            }
        }
        return n == 0 ? 0 : total / n;
    }
}
