using Spectre.Console;

namespace MoeGrains.Cli.Commands;

/// <summary>Progress lines of long commands: grey on the console, or on stderr when stdout carries JSON.</summary>
internal static class CliLog
{
    public static Action<string> Progress(bool json) => json
        ? message => Console.Error.WriteLine(message)
        : message => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(message)}[/]");
}
