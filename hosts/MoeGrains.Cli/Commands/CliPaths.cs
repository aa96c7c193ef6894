namespace MoeGrains.Cli.Commands;

/// <summary>Where the command finds plugins, data and its own checkpoints.</summary>
internal static class CliPaths
{
    public static string Plugins => Environment.GetEnvironmentVariable("MOEGRAINS_PLUGINS") is { Length: > 0 } p ? p : Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>The shared data folder (<see cref="MoeGrains.Hosting.SharedData"/>), or null.</summary>
    public static string? Data => MoeGrains.Hosting.SharedData.Root;

    public static string Checkpoints => Environment.GetEnvironmentVariable("MOEGRAINS_CHECKPOINTS") is { Length: > 0 } c ? c : Path.Combine(Directory.GetCurrentDirectory(), "checkpoints");
}
