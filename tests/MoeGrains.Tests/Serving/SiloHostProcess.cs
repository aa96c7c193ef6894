using System.Diagnostics;
using MoeGrains.Hosting;
using MoeGrains.Tests.Reliability;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Serving;

/// <summary>
/// The real silo host (<c>hosts/MoeGrains.Silo</c>, built beside the tests) as its own process, on free ports, serving a
/// tiny language model checkpoint folder as <c>lm</c> by configuration; killed when disposed.
/// </summary>
public sealed class SiloHostProcess : IAsyncLifetime
{
    private readonly TempFolder _dir = TestPaths.Temp();
    private Process? _process;

    public string CheckpointFolder => _dir.Path;

    public string CheckpointPath { get; private set; } = null!;

    public HttpClient Http { get; private set; } = null!;

    public static string SiloDll
    {
        get
        {
            var configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name; // bin/<Configuration>/net10.0
            var path = Path.Combine(ProcessCluster.RepoRoot, "hosts", "MoeGrains.Silo", "bin", configuration, "net10.0", "MoeGrains.Silo.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException($"MoeGrains.Silo.dll not built at {path}");
        }
    }

    public async Task InitializeAsync()
    {
        CheckpointPath = TinyLanguageModel.Write(_dir.Path, seed: 11);
        var ports = LocalCluster.FreePorts(3);
        var info = new ProcessStartInfo("dotnet")
        {
            UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Path.GetDirectoryName(SiloDll)!,
        };
        foreach (var a in new[]
        {
            SiloDll, $"--urls=http://127.0.0.1:{ports[0]}", $"--Cluster:SiloPort={ports[1]}", $"--Cluster:GatewayPort={ports[2]}",
            $"--Cluster:ClusterId=http-{Guid.NewGuid():N}", "--MoeGrains:Device=cpu", $"--MoeGrains:PluginFolder={TestPaths.Plugins}",
            $"--MoeGrains:Models:lm={_dir.Path}", "--Logging:LogLevel:Default=Warning",
        })
        {
            info.ArgumentList.Add(a);
        }
        _process = Process.Start(info)!;
        var output = new System.Text.StringBuilder();
        _process.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ports[0]}"), Timeout = TimeSpan.FromSeconds(120) };
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"the silo host exited with {_process.ExitCode}: {output}");
            }
            try
            {
                if ((await Http.GetAsync("/health/ready")).IsSuccessStatusCode) return;
            }
            catch (HttpRequestException)
            {
            }
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the silo host was not ready within 90 s: {output}");
            }
            await Task.Delay(200);
        }
    }

    public Task DisposeAsync()
    {
        Http?.Dispose();
        if (_process is { HasExited: false })
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(5000);
        }
        _process?.Dispose();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}
