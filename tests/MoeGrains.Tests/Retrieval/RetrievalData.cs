namespace MoeGrains.Tests.Retrieval;

/// <summary>The SMART collections under the shared data folder: <c>MOEGRAINS_DATA</c>, else <c>shared/data</c> above the working folder or the tests.</summary>
internal static class RetrievalData
{
    public static string Collection(string name)
    {
        var root = Root ?? throw new InvalidOperationException(
            $"The shared data folder was not found: set MOEGRAINS_DATA to the folder that holds ir/{name} (normally ../shared/data beside the repository).");
        var path = Path.Combine(root, "ir", name);
        return Directory.Exists(path) ? path : throw new DirectoryNotFoundException($"Shared collection missing: {path} (data folder {root}).");
    }

    internal static string? Root
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
                    if (Directory.Exists(Path.Combine(candidate, "ir"))) return candidate;
                }
            }
            return null;
        }
    }
}
