using MoeGrains.Checkpoints;
using MoeGrains.Models;
using static TorchSharp.torch;

namespace MoeGrains.Offload;

/// <summary>One expert's calibrated bit-width: its importance, the relative error 4 bits would give its weights, and the choice.</summary>
public sealed record ExpertBitChoice(int Layer, int Expert, double Importance, double Error4, double Error8, int Bits);

/// <summary>
/// EdgeMoE's per-expert bit-widths, calibrated: each expert is stored at 8 or 4 bits so that the store stays within an
/// average of <c>targetBits</c> bits per weight. Every expert starts at 8 bits; the experts whose 4-bit quantisation costs
/// least — the relative error 4 bits give its weights (‖w − dequant(quant₄(w))‖ / ‖w‖, group scales as stored), weighted by
/// how often the router chooses it (its importance, from routing traces) — go down to 4 bits first, until the average fits.
/// </summary>
public static class BitWidthPlanner
{
    public static IReadOnlyList<ExpertBitChoice> Plan(SafeTensorsFile checkpoint, ModelSpec spec, Func<int, int, double> importance, double targetBits,
        int groupSize = ExpertWeightStore.DEFAULT_GROUP_SIZE)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(importance);
        if (targetBits is < 4 or > 8 || double.IsNaN(targetBits))
        {
            throw new ArgumentOutOfRangeException(nameof(targetBits), targetBits, "The average bit-width must be between 4 and 8.");
        }
        var experts = new List<(int Layer, int Expert, double Importance, double E4, double E8, long Weights)>();
        for (var layer = 0; layer < spec.Layers; layer++)
        {
            for (var expert = 0; expert < spec.Experts; expert++)
            {
                var weights = checkpoint.LoadPrefix(ModelSpec.ExpertPrefix(layer, expert));
                try
                {
                    double norm = 0, err4 = 0, err8 = 0;
                    long count = 0;
                    foreach (var w in weights.Values)
                    {
                        using var f = w.to_type(ScalarType.Float32).contiguous();
                        var values = f.data<float>().ToArray();
                        var (rows, cols) = f.shape.Length >= 2 ? (checked((int)(values.Length / f.shape[^1])), checked((int)f.shape[^1])) : (1, values.Length);
                        var back4 = RoundTrip(values, rows, cols, 4, groupSize);
                        var back8 = RoundTrip(values, rows, cols, 8, groupSize);
                        for (var i = 0; i < values.Length; i++)
                        {
                            norm += (double)values[i] * values[i];
                            err4 += Math.Pow(values[i] - back4[i], 2);
                            err8 += Math.Pow(values[i] - back8[i], 2);
                        }
                        count += values.Length;
                    }
                    var scale = Math.Sqrt(Math.Max(norm, 1e-30));
                    experts.Add((layer, expert, Math.Max(0, importance(layer, expert)), Math.Sqrt(err4) / scale, Math.Sqrt(err8) / scale, count));
                }
                finally
                {
                    foreach (var t in weights.Values) t.Dispose();
                }
            }
        }
        // Weights at 4 bits needed for the average: (8·N − target·N) / 4.
        var total = experts.Sum(e => e.Weights);
        var toFour = (8 - targetBits) * total / 4;
        var four = new HashSet<(int, int)>();
        long moved = 0;
        foreach (var e in experts.OrderBy(e => e.Importance * (e.E4 - e.E8)).ThenBy(e => e.Layer).ThenBy(e => e.Expert))
        {
            if (moved >= toFour - 1e-9) break;
            four.Add((e.Layer, e.Expert));
            moved += e.Weights;
        }
        return [.. experts.Select(e => new ExpertBitChoice(e.Layer, e.Expert, e.Importance, e.E4, e.E8, four.Contains((e.Layer, e.Expert)) ? 4 : 8))];
    }

    /// <summary>The bit-width of each expert, for <see cref="ExpertWeightStore.Write"/>.</summary>
    public static Func<int, int, int> Bits(IReadOnlyList<ExpertBitChoice> plan)
    {
        var map = plan.ToDictionary(c => (c.Layer, c.Expert), c => c.Bits);
        return (layer, expert) => map.TryGetValue((layer, expert), out var b) ? b : 8;
    }

    private static float[] RoundTrip(float[] values, int rows, int cols, int bits, int groupSize)
    {
        var (codes, scales) = GroupQuantizer.Quantize(values, rows, cols, bits, groupSize);
        return GroupQuantizer.Dequantize(codes, scales, rows, cols, bits, groupSize);
    }
}
