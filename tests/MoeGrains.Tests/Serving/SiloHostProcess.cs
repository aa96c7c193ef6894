using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Serving;

/// <summary>
/// The real silo host (<c>hosts/MoeGrains.Silo</c>, built beside the tests) as its own process, on free ports, serving a
/// tiny language model checkpoint folder as <c>lm</c> by configuration; killed when disposed.
/// </summary>
public sealed class SiloHostProcess : IAsyncLifetime
{
    private readonly TempFolder _dir = TestPaths.Temp();
    private SiloHostRunner? _host;

    public string CheckpointFolder => _dir.Path;

    public string CheckpointPath { get; private set; } = null!;

    public HttpClient Http => _host?.Http ?? throw new InvalidOperationException("The silo host is not started.");

    public async Task InitializeAsync()
    {
        CheckpointPath = TinyLanguageModel.Write(_dir.Path, seed: 11);
        _host = await SiloHostRunner.StartAsync([$"--MoeGrains:Models:lm={_dir.Path}"], "/health/ready", TimeSpan.FromSeconds(90), TimeSpan.FromSeconds(120));
    }

    public Task DisposeAsync()
    {
        _host?.Dispose();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}
