using System.CommandLine;
using System.Diagnostics;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MoeGrains.Hosting;
using Spectre.Console;

namespace MoeGrains.Cli.Commands;

internal static class ServeCommands
{
    private static readonly Option<string[]> Models = new("--model")
    {
        Description = "A model to serve, as name=checkpoint.safetensors (repeatable)",
        AllowMultipleArgumentsPerToken = true,
    };
    private static readonly Option<string> Device = new("--device") { Description = "auto, cpu or cuda:N", DefaultValueFactory = _ => "auto" };
    private static readonly Option<string> PluginFolder = new("--plugins") { Description = "Plugin folder", DefaultValueFactory = _ => CliPaths.Plugins };
    private static readonly Option<string?> Redis = new("--redis") { Description = "Redis connection string for membership (default: localhost clustering)" };

    internal static Dictionary<string, string> ParseModels(string[]? values)
    {
        var models = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var value in values ?? [])
        {
            var eq = value.IndexOf('=');
            if (eq <= 0 || eq == value.Length - 1)
            {
                throw new ArgumentException($"--model expects name=path, got '{value}'.");
            }
            models[value[..eq]] = Path.GetFullPath(value[(eq + 1)..]);
        }
        return models;
    }

    internal static void Configure(MoeGrainsOptions o, Dictionary<string, string> models, string device, string plugins)
    {
        o.Device = device;
        o.PluginFolder = Path.GetFullPath(plugins);
        foreach (var (k, v) in models) o.Models[k] = v;
    }

    public static Command Serve()
    {
        var silos = new Option<int>("--silos") { Description = "Number of silos", DefaultValueFactory = _ => 2 };
        var processes = new Option<bool>("--processes") { Description = "Run each silo as its own process (default: all in this process)" };
        var siloPort = new Option<int>("--silo-port") { Description = "Silo port of the first silo", DefaultValueFactory = _ => 11111 };
        var gatewayPort = new Option<int>("--gateway-port") { Description = "Gateway port of the first silo", DefaultValueFactory = _ => 30000 };
        var command = new Command("serve", "Run a local cluster of N silos until Ctrl+C") { silos, processes, siloPort, gatewayPort, Models, Device, PluginFolder, Redis };
        command.SetAction(async (parse, ct) =>
        {
            var models = ParseModels(parse.GetValue(Models));
            var n = parse.GetValue(silos);
            if (n < 1)
            {
                AnsiConsole.MarkupLine("[red]--silos must be at least 1[/]");
                return 2;
            }
            var (sp, gp) = (parse.GetValue(siloPort), parse.GetValue(gatewayPort));
            if (parse.GetValue(processes))
            {
                return await ServeProcesses(n, sp, gp, parse.GetValue(Models) ?? [], parse.GetValue(Device)!, parse.GetValue(PluginFolder)!, parse.GetValue(Redis), ct);
            }
            await using var cluster = await LocalCluster.StartAsync(n, (i, silo) => silo.AddMoeGrains(o => Configure(o, models, parse.GetValue(Device)!, parse.GetValue(PluginFolder)!)),
                LogLevel.Warning, (sp, gp), ct);
            AnsiConsole.MarkupLine($"[green]{n} silos running in this process[/]: silo ports {sp}..{sp + n - 1}, gateway ports {gp}..{gp + n - 1}. Ctrl+C stops.");
            await WaitForCancel(ct);
            return 0;
        });
        return command;
    }

    public static Command Silo()
    {
        var siloPort = new Option<int>("--silo-port") { DefaultValueFactory = _ => 11111 };
        var gatewayPort = new Option<int>("--gateway-port") { DefaultValueFactory = _ => 30000 };
        var primaryPort = new Option<int?>("--primary-port") { Description = "Silo port of the primary silo (localhost clustering)" };
        var clusterId = new Option<string>("--cluster-id") { DefaultValueFactory = _ => "moegrains" };
        var probe = new Option<int?>("--probe-timeout-ms") { Description = "Membership probe timeout (Orleans default 5000)" };
        var response = new Option<int?>("--response-timeout-ms") { Description = "Grain call timeout (Orleans default 30000)" };
        var expertTimeout = new Option<int>("--expert-timeout-ms") { Description = "Expert deadline", DefaultValueFactory = _ => MoeGrainsOptions.DEFAULT_EXPERT_TIMEOUT_MS };
        var breakerCooldown = new Option<int>("--breaker-cooldown-ms") { Description = "How long an open circuit breaker skips its expert", DefaultValueFactory = _ => 30_000 };
        var command = new Command("silo", "Run one silo in this process until Ctrl+C or SIGTERM (used by serve --processes)")
        {
            siloPort, gatewayPort, primaryPort, clusterId, probe, response, expertTimeout, breakerCooldown, Models, Device, PluginFolder, Redis,
        };
        command.SetAction(async (parse, ct) =>
        {
            var models = ParseModels(parse.GetValue(Models));
            var redis = parse.GetValue(Redis);
            var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning);
            builder.UseOrleans(silo => silo
                .UseMoeGrainsClustering(new MoeClusterOptions
                {
                    Clustering = string.IsNullOrWhiteSpace(redis) ? "localhost" : "redis",
                    RedisConnectionString = redis,
                    ClusterId = parse.GetValue(clusterId)!,
                    SiloPort = parse.GetValue(siloPort),
                    GatewayPort = parse.GetValue(gatewayPort),
                    PrimarySiloPort = parse.GetValue(primaryPort),
                    ProbeTimeoutMs = parse.GetValue(probe),
                    ResponseTimeoutMs = parse.GetValue(response),
                })
                .AddMoeGrains(o =>
                {
                    Configure(o, models, parse.GetValue(Device)!, parse.GetValue(PluginFolder)!);
                    o.ExpertTimeoutMs = parse.GetValue(expertTimeout);
                    o.BreakerCooldownMs = parse.GetValue(breakerCooldown);
                }));
            using var host = builder.Build();
            await host.StartAsync(ct);
            Console.WriteLine($"silo ready: silo port {parse.GetValue(siloPort)}, gateway port {parse.GetValue(gatewayPort)}, pid {Environment.ProcessId}");
            await WaitForCancel(ct);
            await host.StopAsync(CancellationToken.None);
            return 0;
        });
        return command;
    }

    private static async Task<int> ServeProcesses(int n, int siloPort, int gatewayPort, string[] models, string device, string plugins, string? redis, CancellationToken ct)
    {
        var children = new List<Process>();
        try
        {
            for (var i = 0; i < n; i++)
            {
                var args = new List<string> { "silo", "--silo-port", $"{siloPort + i}", "--gateway-port", $"{gatewayPort + i}", "--primary-port", $"{siloPort}", "--device", device, "--plugins", plugins };
                foreach (var m in models) { args.Add("--model"); args.Add(m); }
                if (!string.IsNullOrWhiteSpace(redis)) { args.Add("--redis"); args.Add(redis); }
                var start = SelfStart(args);
                var child = Process.Start(start) ?? throw new InvalidOperationException("could not start a silo process");
                children.Add(child);
                AnsiConsole.MarkupLine($"started silo {i} as process {child.Id} (silo port {siloPort + i}, gateway port {gatewayPort + i})");
            }
            await WaitForCancel(ct);
            return 0;
        }
        finally
        {
            foreach (var c in children)
            {
                if (!c.HasExited) c.Kill(entireProcessTree: true);
                c.Dispose();
            }
        }
    }

    /// <summary>Starts this same command (moe or dotnet moe.dll) with other arguments.</summary>
    internal static ProcessStartInfo SelfStart(IEnumerable<string> args)
    {
        var exe = Environment.ProcessPath ?? "dotnet";
        var start = new ProcessStartInfo(exe) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet")
        {
            start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moe.dll"));
        }
        foreach (var a in args) start.ArgumentList.Add(a);
        return start;
    }

    internal static async Task WaitForCancel(CancellationToken ct)
    {
        try
        {
            await Task.Delay(Timeout.Infinite, ct);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
