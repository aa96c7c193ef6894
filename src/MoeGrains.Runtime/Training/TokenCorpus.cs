using static TorchSharp.torch;

namespace MoeGrains.Training;

/// <summary>
/// A tokenized text split into training tokens and held-out tokens (the last <c>heldOutFraction</c>). Training batches
/// are drawn from a seed and the step number only, so a resumed run sees exactly the batches it would have seen.
/// With a loss mask, only the marked tokens are targets: the others are given the target <see cref="IgnoredTarget"/>,
/// which cross-entropy skips (bAbI trained on its answers only).
/// </summary>
public sealed class TokenCorpus
{
    /// <summary>The target of a position that does not count in the loss (cross-entropy's default ignore index).</summary>
    public const long IgnoredTarget = -100;

    public TokenCorpus(IReadOnlyList<int> ids, double heldOutFraction = 0.1, IReadOnlyList<bool>? lossMask = null)
    {
        ArgumentNullException.ThrowIfNull(ids);
        if (heldOutFraction is < 0 or >= 1 || double.IsNaN(heldOutFraction))
        {
            throw new ArgumentOutOfRangeException(nameof(heldOutFraction), "The held-out fraction must be in [0, 1).");
        }
        if (lossMask is not null && lossMask.Count != ids.Count)
        {
            throw new ArgumentException($"The loss mask has {lossMask.Count} entries for {ids.Count} tokens.", nameof(lossMask));
        }
        var split = (int)Math.Round(ids.Count * (1 - heldOutFraction));
        Train = ids.Take(split).ToArray();
        HeldOut = ids.Skip(split).ToArray();
        TrainMask = lossMask?.Take(split).ToArray();
        HeldOutMask = lossMask?.Skip(split).ToArray();
    }

    public int[] Train { get; }

    public int[] HeldOut { get; }

    /// <summary>Which training tokens are targets of the loss (null: all).</summary>
    public bool[]? TrainMask { get; }

    /// <summary>Which held-out tokens are targets of the loss (null: all).</summary>
    public bool[]? HeldOutMask { get; }

    /// <summary>
    /// Training batch <paramref name="step"/>: <paramref name="batch"/> windows of <paramref name="block"/> tokens at offsets
    /// drawn from (<paramref name="seed"/>, <paramref name="step"/>); targets are the inputs shifted by one. Int64 <c>[batch, block]</c>.
    /// </summary>
    public (Tensor Inputs, Tensor Targets) TrainingBatch(long step, int batch, int block, long seed)
    {
        if (Train.Length < block + 2)
        {
            throw new InvalidOperationException($"The training text has {Train.Length} tokens, fewer than a block of {block} + 2.");
        }
        var random = new Random(Mix(seed, step)); // not HashCode: its seed differs per process
        var offsets = new int[batch];
        for (var b = 0; b < batch; b++)
        {
            offsets[b] = random.Next(0, Train.Length - block - 1);
        }
        return Windows(Train, offsets, block, TrainMask);
    }

    private static int Mix(long seed, long step)
    {
        // SplitMix64 of the pair: independent streams per step, the same on every run.
        var z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)step + 0x632BE59BD9B4E019UL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (int)((z ^ (z >> 31)) & 0x7FFFFFFF);
    }

    /// <summary>Non-overlapping windows covering <paramref name="ids"/>: the offsets of an evaluation over all of it.</summary>
    public static int[] EvaluationOffsets(int length, int block, int? maxWindows = null)
    {
        var count = Math.Max(0, (length - 1) / block);
        var all = Enumerable.Range(0, count).Select(i => i * block).ToArray();
        if (maxWindows is { } m && m < all.Length)
        {
            // An evenly spread subset, the same every time.
            return Enumerable.Range(0, m).Select(i => all[(int)((long)i * all.Length / m)]).ToArray();
        }
        return all;
    }

    /// <summary>Windows of <paramref name="block"/> tokens at <paramref name="offsets"/> and their next tokens; a target that
    /// <paramref name="mask"/> does not mark is <see cref="IgnoredTarget"/>.</summary>
    public static (Tensor Inputs, Tensor Targets) Windows(int[] ids, IReadOnlyList<int> offsets, int block, bool[]? mask = null)
    {
        var x = new long[offsets.Count * block];
        var y = new long[offsets.Count * block];
        for (var b = 0; b < offsets.Count; b++)
        {
            for (var t = 0; t < block; t++)
            {
                x[b * block + t] = ids[offsets[b] + t];
                var target = offsets[b] + t + 1;
                y[b * block + t] = mask is null || mask[target] ? ids[target] : IgnoredTarget;
            }
        }
        return (tensor(x, [offsets.Count, block]), tensor(y, [offsets.Count, block]));
    }
}
