namespace MoeGrains.Tests.Placement;

/// <summary>The shared data folder: <c>MOEGRAINS_DATA</c>, else <c>shared/data</c> in a folder above the working folder or the tests.</summary>
internal static class PlacementData
{
    public static string MixtralCrossLayerCounts => File("traces", "mixtral_crosslayer_counts.csv");

    public static string File(params string[] parts)
    {
        var root = Root ?? throw new InvalidOperationException(
            "The shared data folder was not found: set MOEGRAINS_DATA to the folder that holds traces/mixtral_crosslayer_counts.csv (normally ../shared/data beside the repository).");
        var path = Path.Combine([root, .. parts]);
        return System.IO.File.Exists(path) ? path : throw new FileNotFoundException($"Shared data file missing: {path} (MOEGRAINS_DATA={root}).", path);
    }

    private static string? Root
    {
        get
        {
            if (Environment.GetEnvironmentVariable("MOEGRAINS_DATA") is { Length: > 0 } env)
            {
                return Directory.Exists(env) ? env : null;
            }
            foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            {
                for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                {
                    var candidate = Path.Combine(dir.FullName, "shared", "data");
                    if (Directory.Exists(candidate)) return candidate;
                }
            }
            return null;
        }
    }
}
