using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoeGrains.Plugins.Diffusion;

/// <summary>
/// The named parameters of a plugin: each is read from the checkpoint (shape checked) when the context has weights, else
/// drawn from the context's seed in a fixed order, so that the same seed always gives the same network.
/// </summary>
internal sealed class Weights : IDisposable
{
    private readonly PluginContext _context;
    private readonly Generator? _generator;
    private readonly List<KeyValuePair<string, Parameter>> _all = [];

    public Weights(PluginContext context)
    {
        _context = context;
        _generator = context.Weights is null ? new Generator((ulong)context.Seed) : null;
    }

    public IReadOnlyList<KeyValuePair<string, Parameter>> All => _all;

    /// <summary>A weight of fan-in <paramref name="fanIn"/>: drawn as N(0, gain²/fan_in) when initialising.</summary>
    public Parameter Take(string name, long[] shape, long fanIn, double gain = 1.0)
    {
        Tensor value;
        if (_context.Weights is null)
        {
            value = randn(shape, generator: _generator).mul_(gain / Math.Sqrt(fanIn)).to(_context.Device);
        }
        else
        {
            value = _context.GetWeight(name, shape).to(ScalarType.Float32, _context.Device).detach().clone();
        }
        var p = new Parameter(value, requires_grad: true);
        p.DetachFromDisposeScope();
        _all.Add(new(name, p));
        return p;
    }

    /// <summary>A bias: zeros when initialising.</summary>
    public Parameter Bias(string name, long size)
    {
        var value = _context.Weights is null ? zeros(size, device: _context.Device) : _context.GetWeight(name, size).to(ScalarType.Float32, _context.Device).detach().clone();
        var p = new Parameter(value, requires_grad: true);
        p.DetachFromDisposeScope();
        _all.Add(new(name, p));
        return p;
    }

    public long ParameterBytes => _all.Sum(p => p.Value.numel() * 4);

    public void Dispose()
    {
        foreach (var p in _all) p.Value.Dispose();
        _generator?.Dispose();
    }
}

/// <summary>Random Fourier-style features of the time: sin and cos of t at geometrically spaced frequencies.</summary>
internal static class TimeFeatures
{
    public static Tensor Of(Tensor time, int count, Device device)
    {
        using var scope = NewDisposeScope();
        using TorchSharp.Scalar pi = Math.PI;
        var freqs = exp(linspace(0, Math.Log(100.0), count, device: device)).mul_(pi);
        var angles = time.to_type(ScalarType.Float32).reshape(-1, 1).mul(freqs.reshape(1, -1));
        return cat([sin(angles), cos(angles)], 1).MoveToOuterDisposeScope();
    }
}
