using System.Diagnostics;
using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Models;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Dispatch;

/// <summary>
/// The in-process dispatcher: the same layer step as the grains (<see cref="MoeLayerRunner"/>), with every expert and
/// router created in this process. The reference that distributed results are checked and measured against.
/// </summary>
public sealed class LocalMoeModel : IDisposable
{
    private readonly PluginCatalog _plugins;
    private readonly SafeTensorsFile _checkpoint;
    private readonly IServiceProvider _services;
    private readonly Dictionary<(int Layer, int Expert), IExpert> _experts = [];
    private readonly Dictionary<int, IRouter> _routers = [];

    public LocalMoeModel(PluginCatalog plugins, string checkpointPath, IServiceProvider services, Device? device = null, string name = "default")
    {
        _plugins = plugins;
        _services = services;
        _checkpoint = SafeTensorsFile.Open(checkpointPath);
        Spec = ModelSpec.FromCheckpoint(name, _checkpoint);
        Device = device ?? CPU;
    }

    public ModelSpec Spec { get; }

    public Device Device { get; }

    public IExpert Expert(int layer, int expert)
    {
        if (!_experts.TryGetValue((layer, expert), out var e))
        {
            e = PluginFactory.CreateExpert(_plugins, Spec, _checkpoint, layer, expert, Device, _services);
            _experts[(layer, expert)] = e;
        }
        return e;
    }

    public IRouter Router(int layer)
    {
        if (!_routers.TryGetValue(layer, out var r))
        {
            r = PluginFactory.CreateRouter(_plugins, Spec, _checkpoint, layer, Device, _services, null);
            _routers[layer] = r;
        }
        return r;
    }

    /// <summary>Runs one layer on <paramref name="hidden"/> <c>[tokens, d_model]</c> in this process.</summary>
    public Task<MoeLayerOutput> ForwardLayerAsync(int layer, Tensor hidden, int kMin = 1, IEnumerable<int>? masked = null, CancellationToken cancellationToken = default)
    {
        var routing = Routing.Route(Router(layer), hidden, Routing.Availability(Spec.Experts, masked));
        return MoeLayerRunner.RunAsync(hidden, routing, Spec.Experts, Spec.DModel, (e, batch, ct) =>
        {
            var sw = Stopwatch.StartNew();
            using var _ = no_grad();
            var y = Expert(layer, e).Forward(batch);
            return Task.FromResult(new ExpertAnswer(y, "local", sw.Elapsed.TotalMilliseconds, 0));
        }, kMin, TimeSpan.FromMinutes(5), cancellationToken);
    }

    public void Dispose()
    {
        foreach (var e in _experts.Values) e.Dispose();
        foreach (var r in _routers.Values) r.Dispose();
        _experts.Clear();
        _routers.Clear();
    }
}
