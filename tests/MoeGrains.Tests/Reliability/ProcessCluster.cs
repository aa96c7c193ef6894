using System.Diagnostics;
using MoeGrains.Client;
using MoeGrains.Hosting;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Reliability;

/// <summary>
/// A real multi-process cluster for failure tests: a private redis-server for membership and N `moe silo` processes,
/// all on loopback. Everything it starts is killed when it is disposed, even after a failed test.
/// </summary>
public sealed class ProcessCluster : IAsyncDisposable
{
    private readonly List<Process> _processes = [];
    private Process? _redis;

    public int RedisPort { get; private set; }

    public string RedisConnectionString => $"127.0.0.1:{RedisPort},abortConnect=false";

    public string ClusterId { get; } = "kill-" + Guid.NewGuid().ToString("N")[..8];

    public IReadOnlyList<(Process Process, int SiloPort, int GatewayPort)> Silos => _silos;

    private readonly List<(Process, int, int)> _silos = [];

    public static string RepoRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "MoeGrains.sln"))) return dir.FullName;
            }
            throw new InvalidOperationException("MoeGrains.sln not found above the test folder.");
        }
    }

    /// <summary>The moe command built beside the tests (same configuration).</summary>
    public static string MoeDll
    {
        get
        {
            var configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name; // bin/<Configuration>/net10.0
            var path = Path.Combine(RepoRoot, "hosts", "MoeGrains.Cli", "bin", configuration, "net10.0", "moe.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException($"moe.dll not built at {path}");
        }
    }

    public static string? RedisServer => new[] { "/usr/bin/redis-server", "/usr/local/bin/redis-server" }.FirstOrDefault(File.Exists);

    public async Task StartRedisAsync()
    {
        var server = RedisServer ?? throw new InvalidOperationException("redis-server is not installed: run .ci/run, or apt-get install redis-server.");
        RedisPort = LocalCluster.FreePorts(1)[0];
        _redis = Start(server, ["--port", $"{RedisPort}", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                using var tcp = new System.Net.Sockets.TcpClient();
                await tcp.ConnectAsync("127.0.0.1", RedisPort);
                return;
            }
            catch (System.Net.Sockets.SocketException)
            {
                await Task.Delay(100);
            }
        }
        throw new TimeoutException("redis-server did not start within 10 s");
    }

    /// <summary>Starts silo processes and waits until each prints that it is ready.</summary>
    public async Task StartSilosAsync(int count, string model, string checkpoint, int probeTimeoutMs, int responseTimeoutMs, int expertTimeoutMs)
    {
        var ports = LocalCluster.FreePorts(count * 2);
        var ready = new List<Task>();
        for (var i = 0; i < count; i++)
        {
            var (sp, gp) = (ports[2 * i], ports[2 * i + 1]);
            var process = Start("dotnet", [MoeDll, "silo", "--redis", RedisConnectionString, "--cluster-id", ClusterId,
                "--silo-port", $"{sp}", "--gateway-port", $"{gp}", "--device", "cpu", "--plugins", TestPaths.Plugins,
                "--model", $"{model}={checkpoint}", "--probe-timeout-ms", $"{probeTimeoutMs}", "--response-timeout-ms", $"{responseTimeoutMs}",
                "--expert-timeout-ms", $"{expertTimeoutMs}", "--breaker-cooldown-ms", "1000"], captureReady: true, out var readyTask);
            _silos.Add((process, sp, gp));
            ready.Add(readyTask!);
        }
        var all = Task.WhenAll(ready);
        if (await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(90))) != all)
        {
            throw new TimeoutException("silo processes did not report ready within 90 s");
        }
    }

    private Process Start(string file, IEnumerable<string> args) => Start(file, args, false, out _);

    private Process Start(string file, IEnumerable<string> args, bool captureReady, out Task? ready)
    {
        var info = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) info.ArgumentList.Add(a);
        var process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        _processes.Add(process);
        var readySource = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data?.StartsWith("silo ready", StringComparison.Ordinal) == true) readySource.TrySetResult();
        };
        process.ErrorDataReceived += (_, _) => { };
        process.Exited += (_, _) => readySource.TrySetException(new InvalidOperationException($"{file} exited with {process.ExitCode}"));
        process.EnableRaisingEvents = true;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        ready = captureReady ? readySource.Task : null;
        return process;
    }

    /// <summary>Whether a process of this id still runs (to check that nothing was left behind).</summary>
    public static bool IsAlive(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }

    /// <summary>
    /// Polls <paramref name="condition"/> every 200 ms until it holds; exceptions <paramref name="tolerated"/> says are
    /// expected while the cluster settles count as "not yet". A <see cref="TimeoutException"/> naming <paramref name="what"/>
    /// after <paramref name="timeout"/>.
    /// </summary>
    public static async Task WaitFor(Func<Task<bool>> condition, TimeSpan timeout, string what, Func<Exception, bool> tolerated)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < timeout)
        {
            try
            {
                if (await condition()) return;
            }
            catch (Exception e) when (tolerated(e))
            {
            }
            await Task.Delay(200);
        }
        throw new TimeoutException($"waited {timeout.TotalSeconds} s for {what}");
    }

    /// <summary>
    /// A client that finds the silos through this cluster's Redis membership, returned once every silo started is an
    /// active member (exceptions <paramref name="tolerated"/> says are expected count as "not yet", for 30 s).
    /// </summary>
    public async Task<MoeClient> ConnectClientAsync(int responseTimeoutMs, Func<Exception, bool> tolerated)
    {
        var client = await MoeClient.ConnectAsync(new MoeClientOptions
        {
            RedisConnectionString = RedisConnectionString,
            ClusterId = ClusterId,
            ResponseTimeoutMs = responseTimeoutMs,
        });
        try
        {
            await WaitFor(async () => (await client.SilosAsync()).Length == _silos.Count, TimeSpan.FromSeconds(30), $"{_silos.Count} active silos", tolerated);
            return client;
        }
        catch
        {
            await client.DisposeAsync();
            throw;
        }
    }

    /// <summary>SIGKILL: no shutdown, no goodbye to the cluster.</summary>
    public static void Kill(Process process) => process.Kill(entireProcessTree: true);

    public ValueTask DisposeAsync()
    {
        foreach (var p in _processes)
        {
            try
            {
                if (!p.HasExited)
                {
                    p.Kill(entireProcessTree: true);
                    p.WaitForExit(5000);
                }
            }
            catch (InvalidOperationException)
            {
            }
            p.Dispose();
        }
        _processes.Clear();
        return ValueTask.CompletedTask;
    }

    public IEnumerable<int> ProcessIds => _processes.Select(p => { try { return p.Id; } catch (InvalidOperationException) { return -1; } });
}

/// <summary>
/// Tests whose pass criteria are times (a kill declared within seconds, a refusal within 5 s) and that start silo
/// processes: they run one at a time, after the parallel tests, so that neither their processes nor other tests' work
/// stretch each other's timings on a small machine.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TimedProcessCollection
{
    public const string Name = "timed processes";
}
