namespace MoeGrains.Offload;

/// <summary>
/// Symmetric group quantisation of a row-major matrix: each run of <c>group</c> consecutive values in a row shares one
/// scale <c>max|x| / qmax</c> (<c>qmax</c> = 127 for 8 bits, 7 for 4 bits); values are rounded to the nearest level, so
/// every element comes back within half a scale step: <c>|x - dequantise(quantise(x))| ≤ scale / 2</c>.
/// 4-bit codes are stored two to a byte (low nibble first), offset by 8.
/// </summary>
public static class GroupQuantizer
{
    public static int MaxLevel(int bits) => bits switch
    {
        8 => 127,
        4 => 7,
        _ => throw new ArgumentOutOfRangeException(nameof(bits), bits, "Only 8 and 4 bits are supported."),
    };

    /// <summary>The group actually used for rows of <paramref name="cols"/> values: <paramref name="group"/> when it divides the row, else the whole row.</summary>
    public static int GroupFor(int cols, int group) => group > 0 && cols % group == 0 ? group : cols;

    /// <summary>Quantises <paramref name="values"/> (<paramref name="rows"/> × <paramref name="cols"/>); returns the codes and one scale per group.</summary>
    public static (byte[] Codes, float[] Scales) Quantize(ReadOnlySpan<float> values, int rows, int cols, int bits, int group)
    {
        if ((long)rows * cols != values.Length)
        {
            throw new ArgumentException($"{values.Length} values do not make a {rows} x {cols} matrix.", nameof(values));
        }
        if (bits == 4 && cols % 2 != 0)
        {
            throw new ArgumentException($"4-bit rows need an even number of columns, got {cols}.", nameof(cols));
        }
        var qmax = MaxLevel(bits);
        var g = GroupFor(cols, group);
        var groups = cols / g;
        var scales = new float[rows * groups];
        var codes = new byte[bits == 8 ? values.Length : values.Length / 2];
        for (var r = 0; r < rows; r++)
        {
            for (var j = 0; j < groups; j++)
            {
                var start = r * cols + j * g;
                var max = 0f;
                for (var i = 0; i < g; i++)
                {
                    var v = values[start + i];
                    if (!float.IsFinite(v))
                    {
                        throw new ArgumentException($"Cannot quantise a non-finite value at row {r}, column {j * g + i}.", nameof(values));
                    }
                    max = Math.Max(max, Math.Abs(v));
                }
                var scale = max > 0 ? max / qmax : 1f;
                scales[r * groups + j] = scale;
                for (var i = 0; i < g; i++)
                {
                    var q = (int)Math.Clamp(MathF.Round(values[start + i] / scale, MidpointRounding.ToEven), -qmax, qmax);
                    var at = start + i;
                    if (bits == 8)
                    {
                        codes[at] = unchecked((byte)(sbyte)q);
                    }
                    else
                    {
                        var nibble = (byte)(q + 8);
                        codes[at / 2] |= (byte)(at % 2 == 0 ? nibble : nibble << 4);
                    }
                }
            }
        }
        return (codes, scales);
    }

    /// <summary>Restores the values of <see cref="Quantize"/>.</summary>
    public static float[] Dequantize(ReadOnlySpan<byte> codes, ReadOnlySpan<float> scales, int rows, int cols, int bits, int group)
    {
        MaxLevel(bits);
        var g = GroupFor(cols, group);
        var groups = cols / g;
        var n = rows * cols;
        if (codes.Length != (bits == 8 ? n : n / 2) || scales.Length != rows * groups)
        {
            throw new ArgumentException($"{codes.Length} codes and {scales.Length} scales do not fit a {rows} x {cols} matrix at {bits} bits in groups of {g}.");
        }
        var values = new float[n];
        for (var at = 0; at < n; at++)
        {
            int q = bits == 8 ? (sbyte)codes[at] : ((at % 2 == 0 ? codes[at / 2] & 0x0F : codes[at / 2] >> 4) - 8);
            var r = at / cols;
            var j = at % cols / g;
            values[at] = q * scales[r * groups + j];
        }
        return values;
    }
}
