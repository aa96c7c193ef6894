using MoeGrains.Hosting;
using static TorchSharp.torch;

namespace MoeGrains.Devices;

/// <summary>
/// This silo's compute device, resolved from configuration (<c>auto</c>, <c>cpu</c>, <c>cuda:N</c>), and its memory
/// budget. Advertised to the cluster through silo metadata (<see cref="DeviceKey"/>, <see cref="MemoryKey"/>).
/// </summary>
public sealed class SiloDevice
{
    public const string DeviceKey = "moegrains.device";
    public const string MemoryKey = "moegrains.device.memory_bytes";

    public SiloDevice(string configured, long memoryBudgetBytes)
    {
        Configured = configured;
        var text = configured.Trim().ToLowerInvariant();
        Name = text switch
        {
            "auto" or "" => cuda.is_available() ? "cuda:0" : "cpu",
            "cpu" => "cpu",
            _ when text.StartsWith("cuda", StringComparison.Ordinal) => cuda.is_available()
                ? text
                : throw new InvalidOperationException($"Device '{configured}' was configured, but CUDA is not available on this machine (CPU libtorch build or no GPU)."),
            _ => throw new ArgumentException($"Unknown device '{configured}': use auto, cpu or cuda:N."),
        };
        Device = new Device(Name);
        MemoryBudgetBytes = memoryBudgetBytes > 0 ? memoryBudgetBytes : DefaultBudget();
    }

    public string Configured { get; }

    public string Name { get; }

    public Device Device { get; }

    public bool IsGpu => Device.type == TorchSharp.DeviceType.CUDA;

    public long MemoryBudgetBytes { get; }

    /// <summary>Where computations on this device queue (shared by the silos of one process).</summary>
    public DeviceLane Lane => DeviceLane.For(Name);

    /// <summary>Half of what the process may use, when no budget is configured.</summary>
    private static long DefaultBudget() => Math.Max(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 2, 256L * 1024 * 1024);

    public static SiloDevice FromOptions(MoeGrainsOptions options)
    {
        var device = new SiloDevice(options.Device, options.DeviceMemoryBudgetBytes);
        device.Lane.MaxQueued = options.MaxQueuedPerSilo;
        var hungAfter = TimeSpan.FromMilliseconds(Math.Max(1, options.DeviceHungAfterMs));
        if (hungAfter < device.Lane.HungAfter)
        {
            device.Lane.HungAfter = hungAfter;
        }
        return device;
    }

    public Dictionary<string, string> Metadata() => new()
    {
        [DeviceKey] = Name,
        [MemoryKey] = MemoryBudgetBytes.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
