using System.Diagnostics;
using System.Text;
using MoeGrains.Hosting;
using MoeGrains.Tests.Reliability;

namespace MoeGrains.Tests.Serving;

/// <summary>
/// The real silo host (<c>hosts/MoeGrains.Silo</c>, built beside the tests) as its own process on free loopback ports,
/// with the given configuration; <see cref="StartAsync"/> returns once the health endpoint answers. Killed when disposed.
/// </summary>
public sealed class SiloHostRunner : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _log = new();

    public HttpClient Http { get; }

    /// <summary>What the process printed so far (for failure messages).</summary>
    public string Log
    {
        get
        {
            lock (_log) return _log.ToString();
        }
    }

    public static string SiloDll
    {
        get
        {
            var configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name; // bin/<Configuration>/net10.0
            var path = Path.Combine(ProcessCluster.RepoRoot, "hosts", "MoeGrains.Silo", "bin", configuration, "net10.0", "MoeGrains.Silo.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException($"MoeGrains.Silo.dll not built at {path}");
        }
    }

    private SiloHostRunner(IEnumerable<string> settings, TimeSpan httpTimeout)
    {
        var ports = LocalCluster.FreePorts(3);
        var info = new ProcessStartInfo("dotnet")
        {
            UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Path.GetDirectoryName(SiloDll)!,
        };
        foreach (var a in new[]
        {
            SiloDll, $"--urls=http://127.0.0.1:{ports[0]}", $"--Cluster:SiloPort={ports[1]}", $"--Cluster:GatewayPort={ports[2]}",
            $"--Cluster:ClusterId=http-{Guid.NewGuid():N}", "--MoeGrains:Device=cpu", $"--MoeGrains:PluginFolder={Infrastructure.TestPaths.Plugins}",
            "--Logging:LogLevel:Default=Warning",
        }.Concat(settings))
        {
            info.ArgumentList.Add(a);
        }
        _process = Process.Start(info) ?? throw new InvalidOperationException("could not start the silo host");
        _process.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _process.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        Http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ports[0]}"), Timeout = httpTimeout };
    }

    /// <summary>
    /// Starts the host with <paramref name="settings"/> (<c>--Section:Key=value</c>) and waits up to
    /// <paramref name="within"/> for <paramref name="healthPath"/> to answer 200.
    /// </summary>
    public static async Task<SiloHostRunner> StartAsync(IEnumerable<string> settings, string healthPath, TimeSpan within, TimeSpan httpTimeout)
    {
        var host = new SiloHostRunner(settings, httpTimeout);
        try
        {
            var deadline = DateTime.UtcNow + within;
            while (true)
            {
                if (host._process.HasExited)
                {
                    throw new InvalidOperationException($"The silo host exited with {host._process.ExitCode}:\n{host.Log}");
                }
                try
                {
                    // Each check on its own short clock: a host that accepts but does not answer yet must not hold the
                    // loop for the client's whole (long) timeout.
                    using var check = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                    using var health = await host.Http.GetAsync(healthPath, check.Token);
                    if (health.IsSuccessStatusCode) return host;
                }
                catch (Exception e) when (e is HttpRequestException or OperationCanceledException)
                {
                }
                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException($"The silo host did not answer {healthPath} within {within.TotalSeconds} s:\n{host.Log}");
                }
                await Task.Delay(250);
            }
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Http.Dispose();
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(5000);
        }
        _process.Dispose();
    }
}
