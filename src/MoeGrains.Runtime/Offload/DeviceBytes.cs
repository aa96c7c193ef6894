using System.Runtime.CompilerServices;

namespace MoeGrains.Offload;

/// <summary>A count of bytes on the device and the most there were at once, updated from any thread.</summary>
internal struct DeviceBytes
{
    private long _now;
    private long _peak;

    public readonly long Now => Interlocked.Read(ref Unsafe.AsRef(in _now));

    public readonly long Peak => Interlocked.Read(ref Unsafe.AsRef(in _peak));

    /// <summary>Adds <paramref name="delta"/> (negative when freed) and raises the peak when the count passes it.</summary>
    public void Add(long delta)
    {
        var now = Interlocked.Add(ref _now, delta);
        long peak;
        while (now > (peak = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, now, peak) != peak)
        {
        }
    }
}
