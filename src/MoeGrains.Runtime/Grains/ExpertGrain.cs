using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Diagnostics;
using MoeGrains.Dispatch;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using static TorchSharp.torch;

namespace MoeGrains.Grains;

/// <summary>
/// Hosts one expert plugin on this silo's device. The plugin and its weights are created on the first call (and after a
/// failure, on the next one, so a repaired checkpoint is picked up without a restart); a bad checkpoint or a plugin that
/// throws fails this expert only, with a typed error.
/// </summary>
[ExpertPlacement]
internal sealed partial class ExpertGrain(
    ModelCatalog models, PluginCatalog plugins, SiloDevice device, IServiceProvider services,
    IOptions<TensorWireOptions> wire, ILogger<ExpertGrain> logger) : Grain, IExpertGrain
{
    private IExpert? _expert;
    private ModelSpec? _spec;

    private IExpert Ensure()
    {
        if (_expert is not null)
        {
            return _expert;
        }
        var (model, layer, index) = ExpertKey.ParseExpert(this.GetPrimaryKeyString());
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
            throw new ExpertFailedException($"Expert '{this.GetPrimaryKeyString()}' could not be loaded: {e.Message}");
        }
        _spec = spec;
        LogLoaded(logger, this.GetPrimaryKeyString(), spec.ExpertPlugin, device.Name, sw.Elapsed.TotalMilliseconds);
        return _expert;
    }

    public Task<ExpertResult> Forward(WireTensor hidden, CancellationToken cancellationToken) =>
        device.Lane.RunAsync(() => Compute(hidden, cancellationToken), cancellationToken);

    private ExpertResult Compute(WireTensor hidden, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var expert = Ensure();
        var spec = _spec!;
        if (hidden.Shape.Count != 2 || hidden.Shape[1] != spec.DModel)
        {
            throw new TensorValidationException(
                $"Expert '{this.GetPrimaryKeyString()}' expects hidden states [tokens, {spec.DModel}], got [{string.Join(", ", hidden.Shape)}].");
        }
        var sw = Stopwatch.StartNew();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = hidden.ToTensor(device.Device);
        if (!TensorChecks.AllFinite(x))
        {
            throw new TensorValidationException($"Expert '{this.GetPrimaryKeyString()}' received non-finite values (NaN or Inf).");
        }
        Tensor y;
        try
        {
            y = expert.Forward(x);
        }
        catch (Exception e) when (e is not MoeGrainsException)
        {
            throw new ExpertFailedException($"Expert '{this.GetPrimaryKeyString()}' failed: {e.Message}");
        }
        var output = WireTensor.FromTensor(y, hidden.DType == TensorDType.Int8 ? TensorDType.Float32 : hidden.DType, wire.Value.MaxTensorBytes);
        var ms = sw.Elapsed.TotalMilliseconds;
        MoeGrainsMetrics.ExpertTokens.Add(hidden.Shape[0]);
        MoeGrainsMetrics.ExpertComputeMs.Record(ms);
        return new ExpertResult(output, RuntimeIdentity, ms);
    }

    public Task<ExpertInfo> Describe()
    {
        var d = Ensure().Descriptor;
        return Task.FromResult(new ExpertInfo(this.GetPrimaryKeyString(), d.Name, RuntimeIdentity, device.Name, d.InputDim, d.OutputDim, d.ParameterBytes, d.DType));
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        _expert?.Dispose();
        _expert = null;
        return Task.CompletedTask;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Expert {Key} ({Plugin}) loaded on {Device} in {Ms:F1} ms")]
    private static partial void LogLoaded(ILogger logger, string key, string plugin, string device, double ms);
}
