using MoeGrains.Hosting;

namespace MoeGrains.Tests.Infrastructure;

/// <summary>Local clusters serving one checkpoint on the CPU with the built-in plugins: the set-up most cluster tests share.</summary>
internal static class ModelClusters
{
    /// <summary>
    /// <paramref name="silos"/> silos serving <paramref name="checkpoint"/> as <paramref name="model"/>, with further
    /// settings (<paramref name="configure"/>) and silo services (<paramref name="silo"/>, e.g. routing traces).
    /// </summary>
    public static Task<LocalCluster> StartAsync(int silos, string checkpoint, Action<MoeGrainsOptions>? configure = null,
        Action<ISiloBuilder>? silo = null, string model = "lm") =>
        LocalCluster.StartAsync(silos, (_, builder) =>
        {
            builder.AddMoeGrains(o =>
            {
                o.Device = "cpu";
                o.Models[model] = checkpoint;
                configure?.Invoke(o);
            }).AddExpertPlugins(TestPaths.Plugins);
            silo?.Invoke(builder);
        });
}
