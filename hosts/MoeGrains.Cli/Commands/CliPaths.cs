namespace MoeGrains.Cli.Commands;

/// <summary>Where the command finds plugins, data and its own checkpoints.</summary>
internal static class CliPaths
{
    public static string Plugins => Environment.GetEnvironmentVariable("MOEGRAINS_PLUGINS") is { Length: > 0 } p ? p : Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>The shared data folder (<see cref="MoeGrains.Hosting.SharedData"/>), or null.</summary>
    public static string? Data => MoeGrains.Hosting.SharedData.Root;

    /// <summary>Where <c>moe train</c> writes the reference language model by default, and where the other commands look for it.</summary>
    public static string ReferenceModel => Path.Combine(Checkpoints, "shakespeare");

    public static string Checkpoints => Environment.GetEnvironmentVariable("MOEGRAINS_CHECKPOINTS") is { Length: > 0 } c ? c : Path.Combine(Directory.GetCurrentDirectory(), "checkpoints");
}
