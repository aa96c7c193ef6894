using System.Collections.Concurrent;

namespace MoeGrains.Devices;

/// <summary>
/// Runs all tensor work for one physical device on one dedicated thread. A CPU matmul already uses every core (and a
/// GPU serialises kernels on its stream), so running experts at once only adds contention; worse, libtorch's OpenMP pool
/// is per calling thread, so compute hopping across thread-pool threads starts many thread teams that spin against each
/// other. Silos hosted in one process share the physical device, hence the lane.
/// </summary>
public sealed class DeviceLane : Dispatch.IComputeLane
{
    private static readonly ConcurrentDictionary<string, DeviceLane> Lanes = new(StringComparer.Ordinal);
    private readonly BlockingCollection<Action> _queue = new();
    private int _waiting;

    private DeviceLane(string device)
    {
        var thread = new Thread(Loop) { IsBackground = true, Name = $"moegrains-device-{device}" };
        thread.Start();
    }

    /// <summary>The lane of <paramref name="device"/> in this process.</summary>
    public static DeviceLane For(string device) => Lanes.GetOrAdd(device, d => new DeviceLane(d));

    /// <summary>Computations queued or running right now.</summary>
    public int Waiting => Volatile.Read(ref _waiting);

    public bool IsLaneThread => Thread.CurrentThread.Name?.StartsWith("moegrains-device-", StringComparison.Ordinal) == true;

    private void Loop()
    {
        foreach (var work in _queue.GetConsumingEnumerable())
        {
            work();
        }
    }

    /// <summary>Runs <paramref name="compute"/> on the device's thread (synchronous, so tensor dispose scopes stay on one thread).</summary>
    public Task<T> RunAsync<T>(Func<T> compute, CancellationToken cancellationToken = default)
    {
        if (IsLaneThread)
        {
            return Task.FromResult(compute());
        }
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Interlocked.Increment(ref _waiting);
        _queue.Add(() =>
        {
            try
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    done.TrySetCanceled(cancellationToken);
                }
                else
                {
                    done.TrySetResult(compute());
                }
            }
            catch (Exception e)
            {
                done.TrySetException(e);
            }
            finally
            {
                Interlocked.Decrement(ref _waiting);
            }
        });
        return done.Task;
    }
}
