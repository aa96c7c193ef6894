using System.Collections.Concurrent;
using System.Diagnostics;

namespace MoeGrains.Devices;

/// <summary>
/// Runs all tensor work for one physical device on one dedicated thread. A CPU matmul already uses every core (and a
/// GPU serialises kernels on its stream), so running experts at once only adds contention; worse, libtorch's OpenMP pool
/// is per calling thread, so compute hopping across thread-pool threads starts many thread teams that spin against each
/// other. Silos hosted in one process share the physical device, hence the lane.
/// A computation that runs longer than <see cref="HungAfter"/> is abandoned to its thread and a fresh worker takes the
/// queue, so one hung expert does not stall every other expert of the device.
/// Work is served oldest request first: each request carries a ticket (the time it entered the cluster, in Orleans'
/// request context, so expert calls inherit it), and the queue orders by ticket. Under load a request is then delayed by
/// the requests that arrived before it, not by every step of every request interleaved with its own steps.
/// </summary>
public sealed class DeviceLane : Dispatch.IComputeLane
{
    private static readonly ConcurrentDictionary<string, DeviceLane> Lanes = new(StringComparer.Ordinal);
    /// <summary>The request-context key of a request's ticket.</summary>
    public const string TicketKey = "moegrains.ticket";

    private readonly PriorityQueue<Action, (long Ticket, long Sequence)> _queue = new();
    private readonly SemaphoreSlim _available = new(0);
    private long _sequence;
    private readonly string _device;
    private readonly Timer _watchdog;
    private int _waiting;
    private int _generation;
    private long _runningSince; // Stopwatch timestamp of the current item, 0 when idle

    private DeviceLane(string device)
    {
        _device = device;
        StartWorker();
        _watchdog = new Timer(_ => CheckHung(), null, TimeSpan.FromMilliseconds(50), TimeSpan.FromMilliseconds(50));
    }

    /// <summary>The lane of <paramref name="device"/> in this process.</summary>
    public static DeviceLane For(string device) => Lanes.GetOrAdd(device, d => new DeviceLane(d));

    /// <summary>Most computations that may wait or run at once; beyond it <see cref="RunAsync{T}"/> refuses at once.</summary>
    public int MaxQueued { get; set; } = int.MaxValue;

    /// <summary>A computation running longer than this is left to its thread and a new worker takes the queue (default 30 s).</summary>
    public TimeSpan HungAfter { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Workers abandoned to hung computations so far.</summary>
    public int AbandonedWorkers { get; private set; }

    /// <summary>Computations queued or running right now.</summary>
    public int Waiting => Volatile.Read(ref _waiting);

    [ThreadStatic]
    private static DeviceLane? _current;

    public bool IsLaneThread => _current == this;

    private void StartWorker()
    {
        var generation = Interlocked.Increment(ref _generation);
        var thread = new Thread(() => Loop(generation)) { IsBackground = true, Name = $"moegrains-device-{_device}-{generation}" };
        thread.Start();
    }

    /// <summary>The current request's ticket, set once where the request enters (the first call that asks).</summary>
    public static long CurrentTicket()
    {
        if (Orleans.Runtime.RequestContext.Get(TicketKey) is long ticket)
        {
            return ticket;
        }
        ticket = Stopwatch.GetTimestamp();
        Orleans.Runtime.RequestContext.Set(TicketKey, ticket);
        return ticket;
    }

    private void Loop(int generation)
    {
        _current = this;
        while (true)
        {
            _available.Wait();
            Action work;
            lock (_queue)
            {
                work = _queue.Dequeue();
            }
            Volatile.Write(ref _runningSince, Stopwatch.GetTimestamp());
            work();
            if (Volatile.Read(ref _generation) != generation)
            {
                return; // a newer worker took over while this one was stuck
            }
            Volatile.Write(ref _runningSince, 0);
        }
    }

    private void CheckHung()
    {
        var since = Volatile.Read(ref _runningSince);
        if (since != 0 && Stopwatch.GetElapsedTime(since) > HungAfter)
        {
            Volatile.Write(ref _runningSince, 0);
            AbandonedWorkers++;
            StartWorker();
        }
    }

    /// <summary>
    /// Disposes plugin objects (and the tensors they hold) on the device's thread, after the computations queued before;
    /// for grains that release what they host when they deactivate. Null items are skipped.
    /// </summary>
    public Task ReleaseAsync(params IDisposable?[] items) => RunAsync(() =>
    {
        foreach (var item in items) item?.Dispose();
        return true;
    }, CancellationToken.None);

    /// <summary>Runs <paramref name="compute"/> on the device's thread (synchronous, so tensor dispose scopes stay on one thread).</summary>
    public Task<T> RunAsync<T>(Func<T> compute, CancellationToken cancellationToken = default)
    {
        if (IsLaneThread)
        {
            return Task.FromResult(compute());
        }
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (Interlocked.Increment(ref _waiting) > MaxQueued)
        {
            Interlocked.Decrement(ref _waiting);
            return Task.FromException<T>(new Contracts.OverloadedException(
                $"The device queue of this silo is full ({MaxQueued} computations waiting or running); request refused.", MaxQueued));
        }
        var ticket = Orleans.Runtime.RequestContext.Get(TicketKey) is long t ? t : Stopwatch.GetTimestamp();
        Action item = () =>
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
        };
        lock (_queue)
        {
            _queue.Enqueue(item, (ticket, _sequence++));
        }
        _available.Release();
        return done.Task;
    }
}
