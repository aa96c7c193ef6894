using static TorchSharp.torch;

namespace MoeGrains.Plugins.Mixtral;

/// <summary>
/// One attention layer's keys and values of the tokens seen so far (<c>[batch, kv_heads, tokens, head_dim]</c>),
/// keeping at most <see cref="Window"/> positions: beyond it the oldest are dropped (a sliding window, as Mistral's
/// <c>sliding_window</c>), so generation can run past the trained context.
/// </summary>
public sealed class LayerKvCache(int window) : IDisposable
{
    private Tensor? _keys;
    private Tensor? _values;

    public int Window { get; } = window > 0 ? window : throw new ArgumentOutOfRangeException(nameof(window));

    /// <summary>Absolute position of the next token.</summary>
    public long Position { get; private set; }

    /// <summary>Positions held.</summary>
    public long Length => _keys?.shape[2] ?? 0;

    /// <summary>Appends the new keys and values; returns all those held (owned by the caller's dispose scope).</summary>
    internal (Tensor Keys, Tensor Values) Append(Tensor keys, Tensor values)
    {
        var k = _keys is null ? keys.detach().clone() : cat([_keys, keys.detach()], 2);
        var v = _values is null ? values.detach().clone() : cat([_values, values.detach()], 2);
        if (k.shape[2] > Window)
        {
            var drop = k.shape[2] - Window;
            k = k.narrow(2, drop, Window).contiguous();
            v = v.narrow(2, drop, Window).contiguous();
        }
        _keys?.Dispose();
        _values?.Dispose();
        _keys = k.detach().DetachFromDisposeScope();
        _values = v.detach().DetachFromDisposeScope();
        Position += keys.shape[2];
        return (_keys.alias(), _values.alias());
    }

    public void Dispose()
    {
        _keys?.Dispose();
        _values?.Dispose();
        _keys = _values = null;
    }
}
