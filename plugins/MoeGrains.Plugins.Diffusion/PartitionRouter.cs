using Microsoft.Extensions.Logging;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoeGrains.Plugins.Diffusion;

/// <summary>
/// The router of a decentralized diffusion model: a small classifier of the source partition from (x_t, t). One 3×3
/// convolution with a time bias, a strided one, a hidden layer over the flattened map and the time features, and the
/// logits. Settings: <c>image_size</c>, <c>image_channels</c> (1), <c>num_experts</c>, <c>router_channels</c> (16),
/// <c>router_hidden</c> (64), <c>time_features</c> (16).
/// </summary>
[Router("partition-router", Description = "Classifier of the data partition from the noisy image and time")]
public sealed class PartitionRouter : IDiffusionRouter, IStateDict
{
    private readonly Weights _weights;
    private readonly Parameter _timeW, _timeB, _inW, _inB, _timeIn, _downW, _downB, _hidW, _hidB, _outW, _outB;
    private readonly int _size, _channels, _experts, _c, _hidden, _features, _half;
    private readonly Device _device;

    public PartitionRouter(PluginContext context, ILogger<PartitionRouter> logger)
    {
        ArgumentNullException.ThrowIfNull(context);
        _size = context.GetInt("image_size");
        _channels = context.GetInt("image_channels", 1);
        _experts = context.GetInt("num_experts");
        _c = context.GetInt("router_channels", 16);
        _hidden = context.GetInt("router_hidden", 64);
        _features = context.GetInt("time_features", 16);
        if (_experts is < 1 or > 256) throw new ArgumentOutOfRangeException(nameof(context), $"Plugin '{context.Id}': num_experts must be 1..256, got {_experts}.");
        _half = (_size + 1) / 2;
        _device = context.Device;
        var w = _weights = new Weights(context);
        long c = _c, flat = c * _half * _half;
        _timeW = w.Take("time.weight", [c, 2L * _features], 2L * _features);
        _timeB = w.Bias("time.bias", c);
        _inW = w.Take("conv_in.weight", [c, _channels, 3, 3], _channels * 9L, Math.Sqrt(2));
        _inB = w.Bias("conv_in.bias", c);
        _timeIn = w.Take("time_in.weight", [c, c], c);
        _downW = w.Take("down.weight", [c, c, 3, 3], c * 9, Math.Sqrt(2));
        _downB = w.Bias("down.bias", c);
        _hidW = w.Take("hidden.weight", [_hidden, flat + c], flat + c, Math.Sqrt(2));
        _hidB = w.Bias("hidden.bias", _hidden);
        _outW = w.Take("out.weight", [_experts, _hidden], _hidden);
        _outB = w.Bias("out.bias", _experts);
        Descriptor = new RouterDescriptor("partition-router", _experts, _experts);
        logger.LogDebug("Partition router {Id}: {Experts} experts", context.Id, _experts);
    }

    public RouterDescriptor Descriptor { get; }

    public long FlopsPerImage
    {
        get
        {
            long c = _c, flat = c * _half * _half;
            return 2L * 9 * (_size * _size * _channels * c + _half * _half * c * c) + 2L * (2L * _features * c + c * c + (flat + c) * _hidden + _hidden * _experts);
        }
    }

    public Tensor Logits(Tensor noisy, Tensor time)
    {
        ArgumentNullException.ThrowIfNull(noisy);
        ArgumentNullException.ThrowIfNull(time);
        if (noisy.dim() != 4 || noisy.shape[1] != _channels || noisy.shape[2] != _size || noisy.shape[3] != _size)
        {
            throw new ArgumentException($"partition-router expects images [batch, {_channels}, {_size}, {_size}], got [{string.Join(", ", noisy.shape)}].", nameof(noisy));
        }
        using var scope = NewDisposeScope();
        var x = noisy.to_type(ScalarType.Float32);
        var temb = F.silu(F.linear(TimeFeatures.Of(time, _features, _device), _timeW, _timeB));
        var h = F.silu(F.conv2d(x, _inW, _inB, padding: [1, 1]).add_(F.linear(temb, _timeIn).unsqueeze(-1).unsqueeze(-1), Scalars.One));
        h = F.silu(F.conv2d(h, _downW, _downB, strides: [2, 2], padding: [1, 1]));
        var z = F.silu(F.linear(cat([h.flatten(1), temb], 1), _hidW, _hidB));
        return F.linear(z, _outW, _outB).MoveToOuterDisposeScope();
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict() => _weights.All.Select(p => new KeyValuePair<string, Tensor>(p.Key, p.Value));

    public void Dispose() => _weights.Dispose();
}
