using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Checkpoints;
using MoeGrains.Generation;
using MoeGrains.Hosting;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Model;

namespace MoeGrains.Tests.Reliability;

/// <summary>
/// RELIABILITY.md, sessions: when the silo holding a generation session is lost, its KV cache and token record go with
/// it. A consumer must get a clear error quickly, never an endless wait on a fresh, empty activation.
/// </summary>
public sealed class SessionLossTests
{
    /// <summary>A tiny language model served as <c>lm</c> by <paramref name="silos"/> silos, and a prompt for it.</summary>
    private static async Task<(LocalCluster Cluster, int[] Prompt)> Serve(TempFolder dir, int silos)
    {
        var checkpoint = TinyLanguageModel.Write(dir.Path, seed: 9, experts: 4);
        var cluster = await LocalCluster.StartAsync(silos, (_, silo) => silo
            .AddMoeGrains(o => { o.Device = "cpu"; o.Models["lm"] = checkpoint; })
            .AddExpertPlugins(TestPaths.Plugins));
        return (cluster, TextTokenizers.FromMetadata(SafeTensorsFile.Open(checkpoint).Metadata).Encode("the lazy dog"));
    }

    [Fact]
    public async Task Losing_the_session_silo_mid_generation_gives_a_clear_error_within_seconds()
    {
        using var dir = TestPaths.Temp();
        var (cluster, prompt) = await Serve(dir, silos: 2);
        await using var _ = cluster;
        var key = IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N"));

        // Start the session from the second silo (sessions are placed where they start), with a long generation.
        var second = cluster.Silos[1].Services;
        var started = await second.GetRequiredService<IGrainFactory>().GetGrain<IDecoderSessionGrain>(key)
            .Generate(prompt, new GenerationOptions { MaxTokens = 4000, Temperature = 0 }, null, CancellationToken.None);
        Assert.Equal(second.GetRequiredService<ILocalSiloDetails>().SiloAddress.ToString(), started.Silo);
        var before = await cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(key).Replay(0);

        // Lose that silo, then ask for the events the way a consumer does after a silence.
        using (var stop = new CancellationTokenSource(TimeSpan.FromSeconds(20)))
        {
            await cluster.Silos[1].StopAsync(stop.Token);
        }
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<SessionLostException>(() => cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(key).Replay(before.Length));
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"the loss took {sw.Elapsed.TotalSeconds:F1} s to surface");
    }

    [Fact]
    public async Task A_step_on_a_session_that_lost_its_state_is_refused_instead_of_silently_starting_over()
    {
        using var dir = TestPaths.Temp();
        var (cluster, ids) = await Serve(dir, silos: 1);
        await using var _ = cluster;
        var prompt = ids.Select(t => (long)t).ToArray();
        var grain = cluster.GrainFactory.GetGrain<IDecoderSessionGrain>(IDecoderSessionGrain.Key("lm", Guid.NewGuid().ToString("N")));
        var append = RemoteSession.Appender(grain, null);
        var first = await append(prompt, CancellationToken.None);
        Assert.Equal(prompt.Length, first.Position);
        // The state goes (as when its silo is lost): the next step reaches a fresh session at position 0.
        await grain.Close();
        var e = await Assert.ThrowsAsync<SessionLostException>(() => append(prompt[..1], CancellationToken.None));
        Assert.Contains("should have left it at", e.Message, StringComparison.Ordinal);
    }
}
