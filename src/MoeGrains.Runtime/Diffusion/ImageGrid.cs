using BigGustave;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>Writes a batch of images <c>[n, 1, s, s]</c> in [-1, 1] as one PNG grid (BigGustave), each image scaled up by whole pixels.</summary>
public static class ImageGrid
{
    public const int MaxSide = 4096;

    /// <summary>
    /// The PNG bytes of a grid of <paramref name="images"/>, <paramref name="columns"/> wide (0: a square), each pixel
    /// <paramref name="scale"/>×; the grid's width is padded to a multiple of 8 pixels.
    /// </summary>
    public static byte[] Png(Tensor images, int columns = 0, int scale = 4, int gap = 1)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.dim() != 4 || images.shape[1] != 1 || images.shape[2] != images.shape[3])
        {
            throw new ArgumentException($"A grid needs single-channel square images [n, 1, s, s], got [{string.Join(", ", images.shape)}].", nameof(images));
        }
        if (scale is < 1 or > 32) throw new ArgumentOutOfRangeException(nameof(scale), $"scale must be 1..32, got {scale}.");
        var n = (int)images.shape[0];
        var s = (int)images.shape[2];
        var cols = columns > 0 ? columns : (int)Math.Ceiling(Math.Sqrt(n));
        var rows = (n + cols - 1) / cols;
        var cell = s * scale + gap;
        // The width is padded (with the gap colour) to a multiple of 8 pixels: BigGustave writes grids of few greys as
        // 1-, 2- or 4-bit palette PNGs and rounds each row's bytes down, which drops the last pixels of a row (an
        // invalid PNG) unless the row fills whole bytes.
        int width = (cols * cell + gap + 7) / 8 * 8, height = rows * cell + gap;
        if (width > MaxSide || height > MaxSide) throw new ArgumentException($"The grid would be {width}x{height} pixels, more than {MaxSide} on a side.", nameof(images));
        using var bytes = images.detach().cpu().clamp(-1, 1).add(1).mul(127.5).round().to_type(ScalarType.Byte).contiguous();
        var pixels = bytes.data<byte>().ToArray();
        var builder = PngBuilder.Create(width, height, false);
        // Every pixel is set exactly once: BigGustave's palette bookkeeping counts each call.
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                int cx = x % cell, cy = y % cell, i = y / cell * cols + x / cell;
                if (cx < gap || cy < gap || i >= n || x / cell >= cols)
                {
                    builder.SetPixel(40, 40, 60, x, y); // the gaps between cells
                    continue;
                }
                var v = pixels[i * s * s + (cy - gap) / scale * s + (cx - gap) / scale];
                builder.SetPixel(v, v, v, x, y);
            }
        }
        using var ms = new MemoryStream();
        builder.Save(ms);
        return ms.ToArray();
    }
}
