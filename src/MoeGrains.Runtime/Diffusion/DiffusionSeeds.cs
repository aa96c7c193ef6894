namespace MoeGrains.Diffusion;

/// <summary>A mean over seeds and its spread (sample standard deviation; 0 for one seed).</summary>
public sealed record MeanSpread(double Mean, double Std)
{
    public static MeanSpread Of(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count == 0) throw new ArgumentException("No values to average.", nameof(values));
        var mean = values.Average();
        var std = values.Count < 2 ? 0 : Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1));
        return new MeanSpread(mean, std);
    }

    public override string ToString() => $"{Mean:F4} ± {Std:F4}";
}

/// <summary>
/// One system over several independently trained seeds: mean ± spread of each figure, and of its paired difference to
/// the monolith of the same seed (negative: better than the monolith for the loss and the Fréchet distance).
/// </summary>
public sealed record DiffusionSeedSystem(
    string Name, int Runs, MeanSpread HeldoutLoss, MeanSpread Frechet, MeanSpread ClassCoverage, double TrainFlops, double SampleFlopsPerImage,
    MeanSpread LossMinusMonolith, MeanSpread FrechetMinusMonolith);

/// <summary>The figures of several seeds of one configuration: per system, and the diagnostics (oracle loss, router accuracy by t).</summary>
public sealed record DiffusionSeedsReport(
    IReadOnlyList<string> Models, IReadOnlyList<DiffusionSeedSystem> Systems, MeanSpread OracleLoss, IReadOnlyList<MeanSpread> RouterAccuracyByTime,
    IReadOnlyList<DiffusionEvalReport> Runs);

/// <summary>Aggregates <see cref="DiffusionEvalReport"/>s of models trained with different seeds.</summary>
public static class DiffusionSeeds
{
    /// <summary>The sub-folder of seed <paramref name="seed"/> under a multi-seed model folder.</summary>
    public static string SeedFolder(string root, long seed) => Path.Combine(root, $"seed-{seed}");

    /// <summary>The seed folders under <paramref name="root"/> (<c>seed-N</c> holding a manifest), in seed order.</summary>
    public static IReadOnlyList<string> SeedFolders(string root) => Directory.Exists(root)
        ? [.. Directory.GetDirectories(root, "seed-*")
            .Where(d => long.TryParse(Path.GetFileName(d).AsSpan(5), System.Globalization.CultureInfo.InvariantCulture, out _) && File.Exists(Path.Combine(d, "manifest.json")))
            .OrderBy(d => long.Parse(Path.GetFileName(d).AsSpan(5), System.Globalization.CultureInfo.InvariantCulture))]
        : [];

    public static DiffusionSeedsReport Aggregate(IReadOnlyList<DiffusionEvalReport> runs)
    {
        ArgumentNullException.ThrowIfNull(runs);
        if (runs.Count == 0) throw new ArgumentException("No runs to aggregate.", nameof(runs));
        var names = runs[0].Systems.Select(s => s.Name).ToList();
        if (runs.Any(r => !r.Systems.Select(s => s.Name).SequenceEqual(names)))
        {
            throw new ArgumentException("The runs do not evaluate the same systems (different numbers of experts?).", nameof(runs));
        }
        var systems = names.Select(name =>
        {
            var of = runs.Select(r => (System: r.Systems.Single(s => s.Name == name), Monolith: r.Systems.FirstOrDefault(s => s.Name == "monolith"))).ToList();
            return new DiffusionSeedSystem(name, runs.Count,
                MeanSpread.Of([.. of.Select(o => o.System.HeldoutLoss)]),
                MeanSpread.Of([.. of.Select(o => o.System.Frechet)]),
                MeanSpread.Of([.. of.Select(o => o.System.ClassCoverage)]),
                of.Average(o => (double)o.System.TrainFlops),
                of.Average(o => o.System.SampleFlopsPerImage),
                MeanSpread.Of([.. of.Select(o => o.System.HeldoutLoss - (o.Monolith?.HeldoutLoss ?? double.NaN))]),
                MeanSpread.Of([.. of.Select(o => o.System.Frechet - (o.Monolith?.Frechet ?? double.NaN))]));
        }).ToList();
        var bins = runs.Min(r => r.RouterAccuracy.Count);
        var router = Enumerable.Range(0, bins).Select(b => MeanSpread.Of([.. runs.Select(r => r.RouterAccuracy[b].Accuracy)])).ToList();
        return new DiffusionSeedsReport([.. runs.Select(r => r.Model)], systems, MeanSpread.Of([.. runs.Select(r => r.OracleLoss)]), router, runs);
    }
}
