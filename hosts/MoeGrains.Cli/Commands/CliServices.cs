using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace MoeGrains.Cli.Commands;

/// <summary>Services for plugins created in the command's own process (in-process dispatch, checkpoint creation).</summary>
internal static class CliServices
{
    public static IServiceProvider Provider { get; } = new ServiceCollection()
        .AddLogging(b => b.AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(LogLevel.Warning))
        .BuildServiceProvider();
}
