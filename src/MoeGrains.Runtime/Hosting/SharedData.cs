namespace MoeGrains.Hosting;

/// <summary>
/// The shared data folder (the real data sets: text, retrieval collections, traces, digits): the environment variable
/// <c>MOEGRAINS_DATA</c>, else the first <c>shared/data</c> folder found above the working folder or the application.
/// </summary>
public static class SharedData
{
    public const string EnvironmentVariable = "MOEGRAINS_DATA";

    /// <summary>The folder, or null when there is none.</summary>
    public static string? Root
    {
        get
        {
            if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } env)
            {
                return System.IO.Directory.Exists(env) ? env : null;
            }
            foreach (var start in new[] { System.IO.Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            {
                for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                {
                    var candidate = Path.Combine(dir.FullName, "shared", "data");
                    if (System.IO.Directory.Exists(candidate))
                    {
                        return candidate;
                    }
                }
            }
            return null;
        }
    }

    /// <summary>A file under the folder; a clear error naming what is missing and how to point at the folder.</summary>
    public static string File(params string[] parts)
    {
        var path = Path.Combine([RequireRoot(parts), .. parts]);
        return System.IO.File.Exists(path) ? path : throw new FileNotFoundException($"Shared data file missing: {path} ({EnvironmentVariable}={Root}).", path);
    }

    /// <summary>A folder under the shared data folder, with the same clear errors.</summary>
    public static string Directory(params string[] parts)
    {
        var path = Path.Combine([RequireRoot(parts), .. parts]);
        return System.IO.Directory.Exists(path) ? path : throw new DirectoryNotFoundException($"Shared data folder missing: {path} ({EnvironmentVariable}={Root}).");
    }

    private static string RequireRoot(string[] parts) => Root ?? throw new InvalidOperationException(
        $"The shared data folder was not found: set {EnvironmentVariable} to the folder that holds {string.Join('/', parts)} (normally ../shared/data beside the repository).");
}
