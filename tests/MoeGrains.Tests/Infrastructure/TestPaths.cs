namespace MoeGrains.Tests.Infrastructure;

internal static class TestPaths
{
    public static string Plugins => Path.Combine(AppContext.BaseDirectory, "plugins");

    public static string TestPlugins => Path.Combine(AppContext.BaseDirectory, "testplugins");

    /// <summary>A fresh temporary folder, removed when disposed.</summary>
    public static TempFolder Temp() => new();
}

internal sealed class TempFolder : IDisposable
{
    public TempFolder()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "moegrains-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
