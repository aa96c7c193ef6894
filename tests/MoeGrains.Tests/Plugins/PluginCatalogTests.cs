using MoeGrains.Contracts;
using MoeGrains.Plugins;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Plugins;

public sealed class PluginCatalogTests
{
    private static PluginContext Context(int index = 0) => new()
    {
        Id = $"t/0/{index}",
        Index = index,
        Device = CPU,
        Settings = new Dictionary<string, string> { ["hidden_size"] = "4", ["num_local_experts"] = "3" },
    };

    [Fact]
    public void A_separately_built_plugin_loads_and_runs()
    {
        var catalog = PluginCatalog.Load(Path.Combine(TestPaths.TestPlugins, "MoeGrains.TestPlugins.Good"));
        Assert.Empty(catalog.Errors);
        Assert.Contains(catalog.Entries, e => e.Name == "test-scale" && e.Kind == PluginKind.Expert);
        Assert.Contains(catalog.Entries, e => e.Name == "test-first" && e.Kind == PluginKind.Router);
        using var expert = catalog.Create<IExpert>("test-scale", PluginKind.Expert, Context(2), TinyModel.Services);
        using var x = ones(2, 4);
        using var y = expert.Forward(x);
        Assert.Equal(3f, y[1, 3].item<float>());
        // The plugin's type lives in its own load context, but implements the host's interface.
        Assert.NotEqual(System.Runtime.Loader.AssemblyLoadContext.Default, System.Runtime.Loader.AssemblyLoadContext.GetLoadContext(expert.GetType().Assembly));
    }

    [Fact]
    public void Bad_plugins_are_reported_by_file_and_type_and_the_others_still_load()
    {
        using var dir = TestPaths.Temp();
        foreach (var name in new[] { "MoeGrains.TestPlugins.Good", "MoeGrains.TestPlugins.Bad" })
        {
            var target = Path.Combine(dir.Path, name);
            Directory.CreateDirectory(target);
            foreach (var f in Directory.GetFiles(Path.Combine(TestPaths.TestPlugins, name)))
            {
                File.Copy(f, Path.Combine(target, Path.GetFileName(f)));
            }
        }
        File.WriteAllText(dir.File("garbage.dll"), "this is not an assembly");

        var catalog = PluginCatalog.Load(dir.Path);

        // Folders load in name order, so the Bad folder's DuplicateNameExpert takes 'test-scale' first and ScaleExpert is the duplicate.
        Assert.Contains(catalog.Entries, e => e.Name == "test-scale" && e.Type.Name == "DuplicateNameExpert");
        Assert.Contains(catalog.Entries, e => e.Name == "test-first");
        Assert.Contains(catalog.Entries, e => e.Name == "bad-throws");
        var errors = catalog.Errors.Select(e => e.ToString()).ToList();
        Assert.Contains(errors, e => e.Contains("garbage.dll") && e.Contains("not a loadable .NET assembly"));
        Assert.Contains(errors, e => e.Contains("NoConstructorExpert") && e.Contains("no public constructor") && e.Contains("MoeGrains.TestPlugins.Bad.dll"));
        Assert.Contains(errors, e => e.Contains("ScaleExpert") && e.Contains("duplicate plugin name 'test-scale'") && e.Contains("DuplicateNameExpert"));
        Assert.Contains(errors, e => e.Contains("NotAnExpert") && e.Contains("implements none"));
    }

    [Fact]
    public void A_plugin_that_throws_in_its_constructor_is_a_clear_error()
    {
        var catalog = PluginCatalog.Load(Path.Combine(TestPaths.TestPlugins, "MoeGrains.TestPlugins.Bad"));
        var e = Assert.Throws<ExpertFailedException>(() => catalog.Create<IExpert>("bad-throws", PluginKind.Expert, Context(), TinyModel.Services));
        Assert.Contains("bad-throws", e.Message);
        Assert.Contains("ThrowingExpert", e.Message);
        Assert.Contains("deliberate failure for t/0/0", e.Message);
    }

    [Fact]
    public void Unknown_names_and_missing_folders_are_clear_errors()
    {
        var catalog = PluginCatalog.Load(TestPaths.Plugins);
        var e = Assert.Throws<UnknownExpertException>(() => catalog.Get("nope", PluginKind.Expert));
        Assert.Contains("No Expert plugin named 'nope'", e.Message);
        Assert.Matches("known: .*swiglu", e.Message);
        var missing = PluginCatalog.Load("/definitely/not/here");
        Assert.Contains("does not exist", Assert.Single(missing.Errors).Message);
    }
}

public sealed class PluginTrustTests
{
    [Fact]
    public void Only_files_in_the_sha256_allow_list_are_loaded()
    {
        var good = Path.Combine(TestPaths.TestPlugins, "MoeGrains.TestPlugins.Good", "MoeGrains.TestPlugins.Good.dll");
        var hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(good)));
        var catalog = PluginCatalog.Load(TestPaths.TestPlugins, trustedSha256: [hash]);
        Assert.Contains(catalog.Entries, e => e.Name == "test-scale" && e.Type.Name == "ScaleExpert");
        Assert.DoesNotContain(catalog.Entries, e => e.Name.StartsWith("bad-", StringComparison.Ordinal));
        Assert.Contains(catalog.Errors, e => e.File.EndsWith("MoeGrains.TestPlugins.Bad.dll", StringComparison.Ordinal) && e.Message.Contains("not in MoeGrains:TrustedPluginSha256"));
    }
}
