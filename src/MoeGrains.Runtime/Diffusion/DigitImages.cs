using System.Globalization;
using System.IO.Compression;
using static TorchSharp.torch;

namespace MoeGrains.Diffusion;

/// <summary>A set of single-channel digit images <c>[n, 1, size, size]</c> scaled to [-1, 1], with their labels.</summary>
public sealed class DigitImages : IDisposable
{
    public DigitImages(Tensor images, int[] labels)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(labels);
        if (images.dim() != 4 || images.shape[1] != 1 || images.shape[2] != images.shape[3] || images.shape[0] != labels.Length)
        {
            throw new ArgumentException($"Digit images must be [n, 1, s, s] with one label each, got [{string.Join(", ", images.shape)}] and {labels.Length} labels.");
        }
        Images = images;
        Labels = labels;
    }

    public Tensor Images { get; }

    public int[] Labels { get; }

    public int Count => Labels.Length;

    public int Size => (int)Images.shape[2];

    /// <summary>The images at <paramref name="indices"/> (a copy).</summary>
    public DigitImages Select(IReadOnlyList<int> indices)
    {
        using var index = tensor(indices.Select(i => (long)i).ToArray());
        return new DigitImages(Images.index_select(0, index).DetachFromDisposeScope(), [.. indices.Select(i => Labels[i])]);
    }

    public void Dispose() => Images.Dispose();
}

/// <summary>The two digit data sets of the shared data folder: a training part and a held-out part of each.</summary>
public static class DigitData
{
    public const string OptDigits = "optdigits";
    public const string Mnist = "mnist";

    /// <summary>Held-out images of the MNIST test split (the last ones); the first 8,000 train.</summary>
    public const int MnistHeldOut = 2000;

    /// <summary>
    /// Loads <paramref name="dataset"/> from <paramref name="digitsFolder"/> (the shared <c>digits/</c> folder).
    /// optdigits: 8×8, its own split (3,823 train, 1,797 held out). mnist: the 10,000-image test split, average-pooled by
    /// <paramref name="mnistPool"/> (2 gives 14×14), the last <see cref="MnistHeldOut"/> held out.
    /// </summary>
    public static (DigitImages Train, DigitImages HeldOut) Load(string digitsFolder, string dataset, int mnistPool = 2)
    {
        switch (dataset)
        {
            case OptDigits:
                return (ReadOptDigits(Path.Combine(digitsFolder, "optdigits.tra")), ReadOptDigits(Path.Combine(digitsFolder, "optdigits.tes")));
            case Mnist:
                using (var all = ReadMnist(Path.Combine(digitsFolder, "t10k-images-idx3-ubyte.gz"), Path.Combine(digitsFolder, "t10k-labels-idx1-ubyte.gz"), mnistPool))
                {
                    var n = all.Count - MnistHeldOut;
                    return (all.Select([.. Enumerable.Range(0, n)]), all.Select([.. Enumerable.Range(n, MnistHeldOut)]));
                }
            default:
                throw new ArgumentException($"Unknown digit data set '{dataset}' (known: {OptDigits}, {Mnist}).", nameof(dataset));
        }
    }

    /// <summary>UCI optdigits CSV: 64 counts 0..16 then the class; lines that are not numbers (a header) are skipped.</summary>
    public static DigitImages ReadOptDigits(string path)
    {
        var pixels = new List<float>();
        var labels = new List<int>();
        var lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            var parts = line.Split(',');
            if (parts.Length != 65 || !int.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out _))
            {
                if (line.Trim().Length == 0 || lineNo == 1) continue;
                throw new FormatException($"{path}:{lineNo}: expected 64 pixel counts and a class, got {parts.Length} fields.");
            }
            for (var i = 0; i < 64; i++)
            {
                var v = int.Parse(parts[i], CultureInfo.InvariantCulture);
                if (v is < 0 or > 16) throw new FormatException($"{path}:{lineNo}: pixel count {v} outside 0..16.");
                pixels.Add(v / 8f - 1f);
            }
            labels.Add(int.Parse(parts[64], CultureInfo.InvariantCulture));
        }
        var images = tensor(pixels.ToArray()).reshape(labels.Count, 1, 8, 8);
        return new DigitImages(images.DetachFromDisposeScope(), [.. labels]);
    }

    /// <summary>MNIST idx files (gzip): images scaled to [-1, 1] after average pooling by <paramref name="pool"/>.</summary>
    public static DigitImages ReadMnist(string imagesGz, string labelsGz, int pool = 2)
    {
        if (pool is < 1 or > 7 || 28 % pool != 0) throw new ArgumentOutOfRangeException(nameof(pool), $"MNIST pooling must divide 28 (1, 2, 4 or 7), got {pool}.");
        var img = ReadGz(imagesGz);
        var lab = ReadGz(labelsGz);
        if (BigEndian(img, 0) != 2051 || BigEndian(lab, 0) != 2049)
        {
            throw new FormatException($"{imagesGz} / {labelsGz}: not MNIST idx files (magic {BigEndian(img, 0)} / {BigEndian(lab, 0)}).");
        }
        int n = BigEndian(img, 4), rows = BigEndian(img, 8), cols = BigEndian(img, 12);
        if (BigEndian(lab, 4) != n || img.Length != 16 + (long)n * rows * cols || lab.Length != 8 + n)
        {
            throw new FormatException($"{imagesGz}: {n} images of {rows}x{cols} do not match the file lengths.");
        }
        using var scope = NewDisposeScope();
        var bytes = tensor(img.AsSpan(16).ToArray(), ScalarType.Byte).reshape(n, 1, rows, cols).to_type(ScalarType.Float32).div_(255f);
        var pooled = pool == 1 ? bytes : nn.functional.avg_pool2d(bytes, pool);
        var images = pooled.mul_(2f).sub_(1f).MoveToOuterDisposeScope();
        return new DigitImages(images, [.. lab.AsSpan(8).ToArray().Select(b => (int)b)]);
    }

    private static byte[] ReadGz(string path)
    {
        using var file = File.OpenRead(path);
        using var gz = new GZipStream(file, CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        return ms.ToArray();
    }

    private static int BigEndian(byte[] b, int at) => b.Length < at + 4 ? -1 : (b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3];
}
