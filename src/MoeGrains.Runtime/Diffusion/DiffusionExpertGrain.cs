using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Dispatch;
using MoeGrains.Plugins;
using Orleans.Concurrency;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>Hosts one diffusion expert plugin on this silo's device, its weights from its own checkpoint (loaded on first call).</summary>
[DiffusionPlacement]
internal sealed class DiffusionExpertGrain(DiffusionCatalog catalog, PluginCatalog plugins, SiloDevice device, IServiceProvider services,
    IOptions<TensorWireOptions> wire) : Grain, IDiffusionExpertGrain
{
    private IDiffusionExpert? _expert;
    private int _size;

    private IDiffusionExpert Ensure(string key)
    {
        if (_expert is not null) return _expert;
        var (folder, _, k) = catalog.Check(key);
        try
        {
            _expert = folder.CreateExpert(plugins, k, device.Device, services);
        }
        catch (Exception e) when (e is not MoeGrainsException)
        {
            throw new ExpertFailedException($"Diffusion expert '{key}' could not be loaded: {e.Message}");
        }
        _size = folder.Manifest.ImageSize;
        return _expert;
    }

    public Task<DiffusionResult> PredictVelocity(WireTensor noisy, WireTensor time)
    {
        ArgumentNullException.ThrowIfNull(noisy);
        ArgumentNullException.ThrowIfNull(time);
        var key = this.GetPrimaryKeyString();
        var silo = RuntimeIdentity;
        return device.Lane.RunAsync(() =>
        {
            var expert = Ensure(key);
            DiffusionInputs.Check(key, noisy, time, _size);
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var x = noisy.ToTensor(device.Device);
            var t = time.ToTensor(device.Device);
            if (!TensorChecks.AllFinite(x) || !TensorChecks.AllFinite(t))
            {
                throw new TensorValidationException($"Diffusion expert '{key}' received non-finite values (NaN or Inf).");
            }
            Tensor v;
            try
            {
                v = expert.PredictVelocity(x, t);
            }
            catch (Exception e) when (e is not MoeGrainsException)
            {
                throw new ExpertFailedException($"Diffusion expert '{key}' failed: {e.Message}");
            }
            return new DiffusionResult(WireTensor.FromTensor(v.cpu(), TensorDType.Float32, wire.Value.MaxTensorBytes), silo);
        });
    }

    public Task<DiffusionExpertInfo> Describe()
    {
        var key = this.GetPrimaryKeyString();
        var silo = RuntimeIdentity;
        return device.Lane.RunAsync(() =>
        {
            var e = Ensure(key);
            return new DiffusionExpertInfo(key, e.Descriptor.Name, silo, _size, e.FlopsPerImage, e.Descriptor.ParameterBytes);
        });
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        var expert = _expert;
        _expert = null;
        return device.Lane.ReleaseAsync(expert);
    }
}

/// <summary>The router of a served diffusion model, one activation per silo that asks.</summary>
[StatelessWorker(1)]
internal sealed class DiffusionRouterGrain(DiffusionCatalog catalog, PluginCatalog plugins, SiloDevice device, IServiceProvider services) : Grain, IDiffusionRouterGrain
{
    private IDiffusionRouter? _router;
    private int _size;

    private IDiffusionRouter Ensure(string model)
    {
        if (_router is null)
        {
            var folder = catalog.Get(model);
            _router = folder.CreateRouter(plugins, device.Device, services);
            _size = folder.Manifest.ImageSize;
        }
        return _router;
    }

    public Task<long> FlopsPerImage()
    {
        var model = this.GetPrimaryKeyString();
        return device.Lane.RunAsync(() => Ensure(model).FlopsPerImage);
    }

    public Task<WireTensor> Logits(WireTensor noisy, WireTensor time)
    {
        ArgumentNullException.ThrowIfNull(noisy);
        ArgumentNullException.ThrowIfNull(time);
        var model = this.GetPrimaryKeyString();
        return device.Lane.RunAsync(() =>
        {
            var router = Ensure(model);
            DiffusionInputs.Check($"{model}/router", noisy, time, _size);
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            return WireTensor.FromTensor(router.Logits(noisy.ToTensor(device.Device), time.ToTensor(device.Device)).cpu());
        });
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        var router = _router;
        _router = null;
        return device.Lane.ReleaseAsync(router);
    }
}

internal static class DiffusionInputs
{
    /// <summary>Images must be <c>[b, 1, size, size]</c> with one time each.</summary>
    public static void Check(string who, WireTensor noisy, WireTensor time, int size)
    {
        var s = noisy.Shape;
        if (s.Count != 4 || s[1] != 1 || s[2] != size || s[3] != size || s[0] < 1)
        {
            throw new DiffusionRequestException($"'{who}' takes images [batch, 1, {size}, {size}], got [{string.Join(", ", s)}].");
        }
        if (time.Shape.Count != 1 || time.Shape[0] != s[0])
        {
            throw new DiffusionRequestException($"'{who}' needs one time per image ([{s[0]}]), got [{string.Join(", ", time.Shape)}].");
        }
    }
}
