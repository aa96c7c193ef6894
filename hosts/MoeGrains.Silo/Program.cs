using MoeGrains.Contracts;
using MoeGrains.Diffusion;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Plugins;
using MoeGrains.Security;
using MoeGrains.Silo.Api;

// A MoeGrains silo: Orleans (localhost or Redis membership), the MoeGrains runtime with its plugin folder and models,
// and an HTTP API. Configured from appsettings.json, MOEGRAINS_-prefixed environment variables and the command line
// (for example --Cluster:SiloPort=11112 --MoeGrains:Models:demo=checkpoints/demo.safetensors).
var builder = WebApplication.CreateBuilder(args);
builder.Configuration.AddEnvironmentVariables("MOEGRAINS_").AddCommandLine(args);
builder.UseOrleans(silo => silo.UseMoeGrainsClustering().UseMoeGrainsTls().AddMoeGrains().AddDiffusion());

var app = builder.Build();

// live: the process answers (cheap, local). ready: joined the cluster, plugins loaded without errors, every model's
// checkpoint valid (SiloReadiness).
app.MapGet("/health/live", () => Results.Ok(new { status = "live" }));
app.MapGet("/health/ready", (SiloReadiness readiness) =>
{
    var r = readiness.Check();
    return r.Ready
        ? Results.Ok(new { status = "ready", silo = r.SiloStatus })
        : Results.Json(new { status = "not ready", silo = r.SiloStatus, problems = r.Problems }, statusCode: 503);
});
app.MapGet("/v1/cluster", async (IGrainFactory grains) => Results.Ok(await grains.GetGrain<IClusterInfoGrain>(0).Silos()));
app.MapGet("/v1/plugins", (PluginCatalog plugins) => Results.Ok(new
{
    plugins = plugins.Entries.Select(e => new { e.Name, kind = e.Kind.ToString(), type = e.Type.FullName, file = e.File, e.Description }),
    errors = plugins.Errors.Select(e => e.ToString()),
}));
app.MapRetrieval();

app.MapImageEndpoints();
app.MapCompletions();
app.MapOffload();

app.Run();
