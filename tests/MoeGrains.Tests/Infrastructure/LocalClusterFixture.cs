using MoeGrains.Hosting;

namespace MoeGrains.Tests.Infrastructure;

/// <summary>
/// A fixture of real silos in this process: <see cref="Prepare"/> writes what they serve into a temporary folder, then
/// the silos start with <see cref="Configure"/>; both go away with the fixture.
/// </summary>
public abstract class LocalClusterFixture(int silos) : IAsyncLifetime
{
    private protected TempFolder Dir { get; } = TestPaths.Temp();

    public LocalCluster Cluster { get; private set; } = null!;

    /// <summary>Writes the checkpoints and collections the silos serve; runs before they start.</summary>
    protected abstract void Prepare();

    protected abstract void Configure(ISiloBuilder silo);

    public async Task InitializeAsync()
    {
        Prepare();
        Cluster = await LocalCluster.StartAsync(silos, (_, silo) => Configure(silo));
    }

    public async Task DisposeAsync()
    {
        await Cluster.DisposeAsync();
        Dir.Dispose();
    }
}
