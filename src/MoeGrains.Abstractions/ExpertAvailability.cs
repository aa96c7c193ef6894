namespace MoeGrains;

/// <summary>Which of a layer's experts may be chosen (failed, masked or unreachable ones may not).</summary>
public sealed class ExpertAvailability
{
    private readonly bool[] _available;

    public ExpertAvailability(IReadOnlyList<bool> available)
    {
        ArgumentNullException.ThrowIfNull(available);
        _available = [.. available];
    }

    /// <summary>All <paramref name="count"/> experts available.</summary>
    public static ExpertAvailability All(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        return new ExpertAvailability(Enumerable.Repeat(true, count).ToArray());
    }

    public int Count => _available.Length;

    public int AvailableCount => _available.Count(a => a);

    public bool this[int expert] => (uint)expert < (uint)_available.Length && _available[expert];

    /// <summary>A copy with <paramref name="expert"/> masked out.</summary>
    public ExpertAvailability Without(int expert)
    {
        var copy = (bool[])_available.Clone();
        if ((uint)expert < (uint)copy.Length)
        {
            copy[expert] = false;
        }
        return new ExpertAvailability(copy);
    }

    public IReadOnlyList<bool> AsList() => _available;
}
