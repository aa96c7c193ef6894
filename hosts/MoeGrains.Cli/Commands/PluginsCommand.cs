using System.CommandLine;
using MoeGrains.Plugins;
using Spectre.Console;

namespace MoeGrains.Cli.Commands;

internal static class PluginsCommand
{
    public static Command Create()
    {
        var folder = new Option<string>("--folder") { Description = "Plugin folder (default: plugins beside moe, or MOEGRAINS_PLUGINS)", DefaultValueFactory = _ => CliPaths.Plugins };
        var list = new Command("list", "List the plugins found in the plugin folder, and the files or types that could not be loaded") { folder };
        list.SetAction(parse =>
        {
            var path = parse.GetValue(folder)!;
            var catalog = PluginCatalog.Load(path);
            var table = new Table().Title($"Plugins in {Markup.Escape(Path.GetFullPath(path))}")
                .AddColumns("name", "kind", "type", "file", "description");
            foreach (var e in catalog.Entries.OrderBy(e => e.Kind).ThenBy(e => e.Name))
            {
                table.AddRow(Markup.Escape(e.Name), e.Kind.ToString(), Markup.Escape(e.Type.FullName ?? e.Type.Name), Markup.Escape(Path.GetFileName(e.File)), Markup.Escape(e.Description ?? ""));
            }
            AnsiConsole.Write(table);
            foreach (var error in catalog.Errors)
            {
                AnsiConsole.MarkupLine($"[red]not loaded:[/] {Markup.Escape(error.ToString())}");
            }
            return catalog.Entries.Count == 0 ? 1 : 0;
        });
        return new Command("plugins", "Inspect plugins") { list };
    }
}
