using System.Diagnostics;
using System.Runtime.InteropServices;

namespace MoeGrains.Diagnostics;

/// <summary>
/// The process's memory as a leak check should see it: the managed heap collected and the C heap's free pages handed
/// back to the operating system (glibc keeps freed blocks of native tensors in per-thread arenas, which the working set
/// counts although nothing uses them).
/// </summary>
public static class NativeHeap
{
    /// <summary>Collects the managed heap, trims the C heap where the platform can, and returns the working set in bytes.</summary>
    public static long SettledWorkingSet()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        Trim();
        using var process = Process.GetCurrentProcess();
        return process.WorkingSet64;
    }

    /// <summary>glibc's malloc_trim(0); false where there is no such call (not Linux, or another C library).</summary>
    public static bool Trim()
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        try
        {
            MallocTrim(0);
            return true;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }
    }

    /// <summary>glibc's mallopt(M_ARENA_MAX, <paramref name="arenas"/>) for the whole process; false where there is no such call.</summary>
    public static bool LimitArenas(int arenas)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(arenas, 1);
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }
        try
        {
            return MallOpt(ArenaMax, arenas) == 1;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return false;
        }
    }

    private const int ArenaMax = -8; // M_ARENA_MAX in glibc's malloc.h

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int MallOpt(int parameter, int value);

    [DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);
}
