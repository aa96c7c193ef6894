using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Dispatch;
using MoeGrains.Models;
using MoeGrains.Plugins;
using Orleans.Concurrency;
using static TorchSharp.torch;

namespace MoeGrains.Grains;

/// <summary>A layer's router as a stateless worker: local to the silo that routes, one plugin instance per router name.</summary>
[StatelessWorker]
internal sealed class RouterGrain(ModelCatalog models, PluginCatalog plugins, SiloDevice device, IServiceProvider services) : Grain, IRouterGrain
{
    /// <summary>Instances made for one request or sequence (names with settings) kept at most; the oldest goes first.</summary>
    public const int MAX_SETTING_INSTANCES = 64;

    private readonly Dictionary<string, IRouter> _routers = new(StringComparer.OrdinalIgnoreCase);
    private readonly Queue<string> _withSettings = new();

    public Task<RoutingResult> Route(WireTensor hidden, bool[]? available, string? router)
    {
        var (model, layer) = ExpertKey.ParseLayer(this.GetPrimaryKeyString());
        var spec = models.Check(model, layer);
        var name = router ?? spec.RouterPlugin;
        if (!_routers.TryGetValue(name, out var instance))
        {
            instance = PluginFactory.CreateRouter(plugins, spec, models.File(model), layer, device.Device, services, name);
            _routers[name] = instance;
            if (RouterNames.HasSettings(name))
            {
                // One instance per sequence (a per-sequence router) or per setting (SCMoE's weak rank): keep the recent ones.
                // Calls are handled one at a time, so an evicted instance is not in use.
                _withSettings.Enqueue(name);
                if (_withSettings.Count > MAX_SETTING_INSTANCES && _routers.Remove(_withSettings.Dequeue(), out var old))
                {
                    old.Dispose();
                }
            }
        }
        if (available is not null && available.Length != spec.Experts)
        {
            throw new TensorValidationException($"The availability mask has {available.Length} entries; layer {layer} has {spec.Experts} experts.");
        }
        var mask = available is null ? ExpertAvailability.All(spec.Experts) : new ExpertAvailability(available);
        return device.Lane.RunAsync(() =>
        {
            using var scope = NewDisposeScope();
            return Routing.Route(instance, hidden.ToTensor(device.Device), mask);
        });
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        foreach (var r in _routers.Values) r.Dispose();
        _routers.Clear();
        return Task.CompletedTask;
    }
}
