using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Diagnostics;
using MoeGrains.Hosting;
using MoeGrains.Dispatch;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using Orleans.Concurrency;
using static TorchSharp.torch;

namespace MoeGrains.Grains;

/// <summary>
/// Hosts one expert plugin on this silo's device. The plugin and its weights are created on the first call (and after a
/// failure, on the next one, so a repaired checkpoint is picked up without a restart); a bad checkpoint or a plugin that
/// throws fails this expert only, with a typed error.
/// </summary>
/// <remarks>
/// Reentrant, so that it can count what waits for it and refuse beyond <see cref="MoeGrainsOptions.MaxQueuedPerExpert"/>
/// at once; the computations themselves are serialised on the device lane's thread.
/// </remarks>
[ExpertPlacement]
[Reentrant]
internal sealed partial class ExpertGrain(
    ModelCatalog models, PluginCatalog plugins, SiloDevice device, IServiceProvider services,
    IOptions<TensorWireOptions> wire, IOptions<MoeGrainsOptions> options, ILogger<ExpertGrain> logger) : Grain, IExpertGrain
{
    private IExpert? _expert;
    private ModelSpec? _spec;
    private int _pending;

    private IExpert Ensure(string key)
    {
        if (_expert is not null)
        {
            return _expert;
        }
        var (model, layer, index) = ExpertKey.ParseExpert(key);
        var spec = models.Check(model, layer, index);
        var sw = Stopwatch.StartNew();
        try
        {
            _expert = PluginFactory.CreateExpert(plugins, spec, models.File(model), layer, index, device.Device, services);
        }
        catch (MoeGrainsException)
        {
            throw;
        }
        catch (Exception e)
        {
            throw new ExpertFailedException($"Expert '{key}' could not be loaded: {e.Message}");
        }
        _spec = spec;
        LogLoaded(logger, key, spec.ExpertPlugin, device.Name, sw.Elapsed.TotalMilliseconds);
        return _expert;
    }

    public async Task<ExpertResult> Forward(WireTensor hidden, CancellationToken cancellationToken)
    {
        var limit = options.Value.MaxQueuedPerExpert;
        if (++_pending > limit)
        {
            _pending--;
            throw new OverloadedException($"Expert '{this.GetPrimaryKeyString()}' already holds {limit} requests; request refused.", limit);
        }
        try
        {
            var key = this.GetPrimaryKeyString();
            var here = RuntimeIdentity;
            return await device.Lane.RunAsync(() => Compute(key, here, hidden, cancellationToken), cancellationToken);
        }
        finally
        {
            _pending--;
        }
    }

    // Runs on the device lane's thread: only the arguments and this grain's plugin fields are touched here.
    private ExpertResult Compute(string key, string silo, WireTensor hidden, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var expert = Ensure(key);
        var spec = _spec!;
        if (hidden.Shape.Count != 2 || hidden.Shape[1] != spec.DModel)
        {
            throw new TensorValidationException(
                $"Expert '{key}' expects hidden states [tokens, {spec.DModel}], got [{string.Join(", ", hidden.Shape)}].");
        }
        var sw = Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = hidden.ToTensor(device.Device);
        if (!TensorChecks.AllFinite(x))
        {
            throw new TensorValidationException($"Expert '{key}' received non-finite values (NaN or Inf).");
        }
        Tensor y;
        try
        {
            y = expert.Forward(x);
        }
        catch (Exception e) when (e is not MoeGrainsException)
        {
            throw new ExpertFailedException($"Expert '{key}' failed: {e.Message}");
        }
        if (!TensorChecks.AllFinite(y))
        {
            throw new ExpertFailedException($"Expert '{key}' produced non-finite values (NaN or Inf).");
        }
        var output = WireTensor.FromTensor(y, hidden.DType == TensorDType.Int8 ? TensorDType.Float32 : hidden.DType, wire.Value.MaxTensorBytes);
        var ms = sw.Elapsed.TotalMilliseconds;
        MoeGrainsMetrics.ExpertTokens.Add(hidden.Shape[0]);
        MoeGrainsMetrics.ExpertComputeMs.Record(ms);
        return new ExpertResult(output, silo, ms);
    }

    public Task<ExpertInfo> Describe()
    {
        var key = this.GetPrimaryKeyString();
        var silo = RuntimeIdentity;
        return device.Lane.RunAsync(() =>
        {
            var d = Ensure(key).Descriptor;
            return new ExpertInfo(key, d.Name, silo, device.Name, d.InputDim, d.OutputDim, d.ParameterBytes, d.DType);
        });
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken) =>
        device.Lane.RunAsync(() =>
        {
            _expert?.Dispose();
            _expert = null;
            return true;
        }, CancellationToken.None);

    [LoggerMessage(Level = LogLevel.Information, Message = "Expert {Key} ({Plugin}) loaded on {Device} in {Ms:F1} ms")]
    private static partial void LogLoaded(ILogger logger, string key, string plugin, string device, double ms);
}
