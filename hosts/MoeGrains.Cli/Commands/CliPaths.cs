namespace MoeGrains.Cli.Commands;

/// <summary>Where the command finds plugins, data and its own checkpoints.</summary>
internal static class CliPaths
{
    public static string Plugins => Environment.GetEnvironmentVariable("MOEGRAINS_PLUGINS") is { Length: > 0 } p ? p : Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>The shared data folder: <c>MOEGRAINS_DATA</c>, else <c>../shared/data</c> above the working folder or the repository.</summary>
    public static string? Data
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
                    if (Directory.Exists(candidate))
                    {
                        return candidate;
                    }
                }
            }
            return null;
        }
    }

    public static string Checkpoints => Environment.GetEnvironmentVariable("MOEGRAINS_CHECKPOINTS") is { Length: > 0 } c ? c : Path.Combine(Directory.GetCurrentDirectory(), "checkpoints");
}
