using Microsoft.Extensions.Logging;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoeGrains.Plugins.Diffusion;

/// <summary>
/// A small convolutional velocity network for flow matching: four 3×3 convolutions (the third dilated, with a residual
/// connection), SiLU, and the time's Fourier features projected to a per-channel bias of the first two. Settings:
/// <c>image_size</c>, <c>image_channels</c> (1), <c>hidden_channels</c> (32), <c>time_features</c> (16).
/// </summary>
[Expert("conv-denoiser", Description = "Small convolutional flow-matching velocity network")]
public sealed class ConvDenoiser : IDiffusionExpert, IStateDict
{
    private readonly Weights _weights;
    private readonly Parameter _timeW, _timeB, _inW, _inB, _timeIn, _c1W, _c1B, _time1, _c2W, _c2B, _outW, _outB;
    private readonly int _size, _channels, _hidden, _features, _dilation;
    private readonly Device _device;

    public ConvDenoiser(PluginContext context, ILogger<ConvDenoiser> logger)
    {
        ArgumentNullException.ThrowIfNull(context);
        _size = context.GetInt("image_size");
        _channels = context.GetInt("image_channels", 1);
        _hidden = context.GetInt("hidden_channels", 32);
        _features = context.GetInt("time_features", 16);
        if (_size is < 4 or > 64) throw new ArgumentOutOfRangeException(nameof(context), $"Plugin '{context.Id}': image_size must be 4..64, got {_size}.");
        if (_hidden is < 1 or > 512) throw new ArgumentOutOfRangeException(nameof(context), $"Plugin '{context.Id}': hidden_channels must be 1..512, got {_hidden}.");
        _dilation = _size > 8 ? 2 : 1;
        _device = context.Device;
        var w = _weights = new Weights(context);
        long c = _hidden, ch = _channels;
        _timeW = w.Take("time.weight", [c, 2L * _features], 2L * _features);
        _timeB = w.Bias("time.bias", c);
        _inW = w.Take("conv_in.weight", [c, ch, 3, 3], ch * 9, Math.Sqrt(2));
        _inB = w.Bias("conv_in.bias", c);
        _timeIn = w.Take("time_in.weight", [c, c], c);
        _c1W = w.Take("conv1.weight", [c, c, 3, 3], c * 9, Math.Sqrt(2));
        _c1B = w.Bias("conv1.bias", c);
        _time1 = w.Take("time1.weight", [c, c], c);
        _c2W = w.Take("conv2.weight", [c, c, 3, 3], c * 9, Math.Sqrt(2));
        _c2B = w.Bias("conv2.bias", c);
        _outW = w.Take("conv_out.weight", [ch, c, 3, 3], c * 9, 0.5);
        _outB = w.Bias("conv_out.bias", ch);
        Descriptor = new ExpertDescriptor("conv-denoiser", ExpertKind.Diffusion, _channels * _size * _size, _channels * _size * _size, w.ParameterBytes, "float32")
        {
            Description = $"{_size}x{_size}x{_channels}, {_hidden} hidden channels",
        };
        logger.LogDebug("Conv denoiser {Id}: {Size}x{Size}, {Hidden} channels", context.Id, _size, _size, _hidden);
    }

    public ExpertDescriptor Descriptor { get; }

    public long FlopsPerImage
    {
        get
        {
            long pixels = (long)_size * _size, c = _hidden;
            var convs = 2L * 9 * pixels * (_channels * c + c * c + c * c + c * _channels);
            var linears = 2L * (2L * _features * c + 2 * c * c);
            return convs + linears;
        }
    }

    public Tensor PredictVelocity(Tensor noisy, Tensor time)
    {
        ArgumentNullException.ThrowIfNull(noisy);
        ArgumentNullException.ThrowIfNull(time);
        if (noisy.dim() != 4 || noisy.shape[1] != _channels || noisy.shape[2] != _size || noisy.shape[3] != _size)
        {
            throw new ArgumentException($"conv-denoiser expects images [batch, {_channels}, {_size}, {_size}], got [{string.Join(", ", noisy.shape)}].", nameof(noisy));
        }
        if (time.numel() != noisy.shape[0])
        {
            throw new ArgumentException($"conv-denoiser expects one time per image ({noisy.shape[0]}), got {time.numel()}.", nameof(time));
        }
        using var scope = NewDisposeScope();
        var x = noisy.to_type(ScalarType.Float32);
        var temb = F.silu(F.linear(TimeFeatures.Of(time, _features, _device), _timeW, _timeB));
        var h = F.silu(F.conv2d(x, _inW, _inB, padding: [1, 1]).add_(F.linear(temb, _timeIn).unsqueeze(-1).unsqueeze(-1), Scalars.One));
        h = F.silu(F.conv2d(h, _c1W, _c1B, padding: [_dilation, _dilation], dilation: [_dilation, _dilation])
            .add_(F.linear(temb, _time1).unsqueeze(-1).unsqueeze(-1), Scalars.One));
        h = F.silu(F.conv2d(h, _c2W, _c2B, padding: [2, 2], dilation: [2, 2])).add_(h, Scalars.One);
        return F.conv2d(h, _outW, _outB, padding: [1, 1]).MoveToOuterDisposeScope();
    }

    public IEnumerable<KeyValuePair<string, Tensor>> StateDict() => _weights.All.Select(p => new KeyValuePair<string, Tensor>(p.Key, p.Value));

    public void Dispose() => _weights.Dispose();
}
