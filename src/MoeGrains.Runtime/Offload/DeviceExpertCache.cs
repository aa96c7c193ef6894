using System.Diagnostics;
using MoeGrains.Diagnostics;

namespace MoeGrains.Offload;

/// <summary>An expert of a model: its layer and its index in the layer (and the model's name, where a cache holds several).</summary>
public readonly record struct ExpertId(int Layer, int Expert, string? Model = null)
{
    public override string ToString() => Model is null ? $"{Layer}/{Expert}" : $"{Model}/{Layer}/{Expert}";
}

/// <summary>How a full cache chooses what to evict.</summary>
public enum ExpertCachePolicy
{
    /// <summary>The least recently used expert.</summary>
    Lru,

    /// <summary>The least frequently used expert (uses counted since the cache was made), least recent among equals.</summary>
    Lfu,

    /// <summary>
    /// The expert whose next use is predicted farthest away (<see cref="DeviceExpertCache{T}.NextUse"/>), least recent among
    /// equals; with this policy the runner also prefetches predicted experts.
    /// </summary>
    Predictive,
}

/// <summary>The device memory a cache may fill: at most <see cref="MaxExperts"/> experts and <see cref="MaxBytes"/> bytes.</summary>
public sealed record ExpertCacheBudget(int MaxExperts = int.MaxValue, long MaxBytes = long.MaxValue)
{
    public void Validate(long largestExpertBytes)
    {
        if (MaxExperts < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxExperts), MaxExperts, "An expert cache must hold at least one expert.");
        }
        if (MaxBytes < largestExpertBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxBytes), MaxBytes, $"An expert cache must hold at least the largest expert ({largestExpertBytes} bytes).");
        }
    }
}

/// <summary>What a cache has done so far. A hit is an access that found the expert resident or already being prefetched.</summary>
public sealed record ExpertCacheStats(
    long Accesses, long Hits, long DemandLoads, long Prefetches, long PrefetchesUsed, long Evictions, long BytesRead,
    int ResidentExperts, long ResidentBytes, int PeakResidentExperts, long PeakResidentBytes, double StallMs)
{
    public double HitRatio => Accesses == 0 ? 0 : (double)Hits / Accesses;

    /// <summary>Every load from storage, on demand or prefetched.</summary>
    public long Loads => DemandLoads + Prefetches;
}

/// <summary>
/// The experts resident on a device under a budget of experts and bytes. <see cref="Acquire"/> returns a pinned expert,
/// loading it (and evicting others by the policy) when it is not resident; <see cref="Prefetch"/> starts loading one in
/// the background when the policy judges it worth more than what it would evict. The budget counts experts being
/// loaded, so resident experts never exceed it. Pinned experts are never evicted; an evicted expert is disposed.
/// Thread-safe.
/// </summary>
public sealed class DeviceExpertCache<T> : IDisposable where T : class, IDisposable
{
    private readonly Dictionary<ExpertId, Entry> _entries = [];
    private readonly Dictionary<ExpertId, long> _frequency = [];
    private readonly Func<ExpertId, long> _deviceBytes;
    private readonly Func<ExpertId, (T Value, long BytesRead)> _load;
    private readonly Lock _gate = new();
    private long _clock;
    private TaskCompletionSource _unpinned = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _accesses, _hits, _demandLoads, _prefetches, _prefetchesUsed, _evictions, _bytesRead, _residentBytes, _peakBytes;
    private int _peakExperts;
    private double _stallMs;
    private bool _disposed;

    public DeviceExpertCache(ExpertCacheBudget budget, ExpertCachePolicy policy, Func<ExpertId, long> deviceBytes, Func<ExpertId, (T Value, long BytesRead)> load)
    {
        Budget = budget;
        Policy = policy;
        _deviceBytes = deviceBytes;
        _load = load;
    }

    public ExpertCacheBudget Budget { get; }

    public ExpertCachePolicy Policy { get; }

    /// <summary>Whether this cache reports to the <c>moegrains.offload.*</c> instruments (the experts' cache does; a cache of other weights does not).</summary>
    public bool ReportsMetrics { get; init; } = true;

    /// <summary>
    /// For <see cref="ExpertCachePolicy.Predictive"/>: the expected number of expert-layer steps until an expert is used
    /// again (smaller is sooner); the expert farthest away is evicted first. Set by the runner as predictions change.
    /// </summary>
    public Func<ExpertId, double>? NextUse { get; set; }

    /// <summary>A pinned expert: use <see cref="Value"/>, then dispose the lease so the expert may be evicted again.</summary>
    public sealed class Lease : IDisposable
    {
        private DeviceExpertCache<T>? _cache;
        private readonly Entry _entry;

        internal Lease(DeviceExpertCache<T> cache, Entry entry, bool hit)
        {
            _cache = cache;
            _entry = entry;
            Hit = hit;
        }

        public T Value => _entry.Value ?? throw new ObjectDisposedException(nameof(Lease));

        /// <summary>The expert was resident or being prefetched when it was asked for.</summary>
        public bool Hit { get; }

        public void Dispose()
        {
            var cache = Interlocked.Exchange(ref _cache, null);
            if (cache is not null)
            {
                TaskCompletionSource? unpinned = null;
                lock (cache._gate)
                {
                    if (--_entry.Pins == 0)
                    {
                        unpinned = cache._unpinned;
                        cache._unpinned = new(TaskCreationOptions.RunContinuationsAsynchronously);
                    }
                }
                unpinned?.TrySetResult();
            }
        }
    }

    internal sealed class Entry(ExpertId id, long bytes)
    {
        public ExpertId Id { get; } = id;
        public long Bytes { get; } = bytes;
        public T? Value { get; set; }
        public Task? Loading { get; set; }
        public Exception? Error { get; set; }
        public bool Prefetched { get; set; }
        public long LastUse { get; set; }
        public int Pins { get; set; }
    }

    public bool IsResident(ExpertId id)
    {
        lock (_gate)
        {
            return _entries.ContainsKey(id);
        }
    }

    public IReadOnlyList<ExpertId> Resident()
    {
        lock (_gate)
        {
            return [.. _entries.Keys.OrderBy(k => k.Layer).ThenBy(k => k.Expert)];
        }
    }

    /// <summary>Returns the expert pinned, loading it when it is not resident (the time spent waiting is the stall).</summary>
    public Lease Acquire(ExpertId id, CancellationToken cancellationToken = default)
    {
        var sw = Stopwatch.StartNew();
        var counted = false;
        var hit = true;
        try
        {
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();
                Entry entry;
                Task? wait = null;
                var loadHere = false;
                TaskCompletionSource? demand = null;
                lock (_gate)
                {
                    ObjectDisposedException.ThrowIf(_disposed, this);
                    if (_entries.TryGetValue(id, out var found))
                    {
                        entry = found;
                        if (!counted)
                        {
                            Count(id, hit: true);
                            counted = true;
                            if (entry.Prefetched)
                            {
                                entry.Prefetched = false;
                                _prefetchesUsed++;
                            }
                        }
                        if (entry.Value is not null)
                        {
                            entry.Pins++;
                            entry.LastUse = ++_clock;
                            return new Lease(this, entry, hit);
                        }
                        wait = entry.Loading;
                    }
                    else
                    {
                        if (!counted)
                        {
                            Count(id, hit: false);
                            counted = true;
                            hit = false;
                        }
                        var bytes = _deviceBytes(id);
                        if (MakeRoom(bytes, candidate: null))
                        {
                            entry = Reserve(id, bytes);
                            entry.Pins++; // pinned while it loads, so a prefetch cannot evict it
                            demand = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                            entry.Loading = demand.Task;
                            _demandLoads++;
                            loadHere = true;
                        }
                        else
                        {
                            // Every slot is loading or in use by other computations (a device lane that runs a slow one
                            // beside the next): wait for a load to end or an expert to be let go.
                            wait = _entries.Values.FirstOrDefault(e => e.Value is null && e.Loading is not null)?.Loading
                                ?? (_entries.Values.Any(e => e.Pins > 0) ? _unpinned.Task : null)
                                ?? throw new InvalidOperationException(
                                    $"The expert cache ({Budget.MaxExperts} experts, {Budget.MaxBytes} bytes) is full of experts in use: expert {id} cannot be loaded.");
                            entry = null!;
                        }
                    }
                }
                if (loadHere)
                {
                    try
                    {
                        Fill(entry);
                        demand!.SetResult();
                    }
                    catch (Exception e)
                    {
                        lock (_gate)
                        {
                            entry.Pins--;
                        }
                        demand!.SetException(e);
                        throw;
                    }
                    lock (_gate)
                    {
                        entry.LastUse = ++_clock;
                    }
                    return new Lease(this, entry, hit: false);
                }
                try
                {
                    wait!.Wait(cancellationToken);
                }
                catch (AggregateException)
                {
                    // A failed prefetch removed its entry: the next round loads on demand and reports the error itself.
                }
            }
        }
        finally
        {
            var ms = sw.Elapsed.TotalMilliseconds;
            lock (_gate)
            {
                _stallMs += ms;
            }
            if (ReportsMetrics) MoeGrainsMetrics.OffloadStallMs.Record(ms);
        }
    }

    /// <summary>
    /// Starts loading <paramref name="id"/> in the background when it is not resident and there is room, or the policy
    /// would rather evict something whose next use is farther away. Returns whether a load was started.
    /// </summary>
    public bool Prefetch(ExpertId id)
    {
        Entry entry;
        lock (_gate)
        {
            if (_disposed || _entries.ContainsKey(id))
            {
                return false;
            }
            var bytes = _deviceBytes(id);
            if (!MakeRoom(bytes, candidate: id))
            {
                return false;
            }
            entry = Reserve(id, bytes);
            entry.Prefetched = true;
            _prefetches++;
            entry.Loading = Task.Run(() => Fill(entry));
        }
        return true;
    }

    /// <summary>Waits for the prefetches in flight (for tests and orderly shutdown).</summary>
    public void WaitForPrefetches()
    {
        Task[] loading;
        lock (_gate)
        {
            loading = [.. _entries.Values.Select(e => e.Loading).OfType<Task>()];
        }
        try
        {
            Task.WaitAll(loading);
        }
        catch (AggregateException)
        {
        }
    }

    public ExpertCacheStats Stats()
    {
        lock (_gate)
        {
            return new ExpertCacheStats(_accesses, _hits, _demandLoads, _prefetches, _prefetchesUsed, _evictions, _bytesRead,
                _entries.Count, _residentBytes, _peakExperts, _peakBytes, _stallMs);
        }
    }

    private void Count(ExpertId id, bool hit)
    {
        _accesses++;
        _frequency[id] = _frequency.GetValueOrDefault(id) + 1;
        if (hit)
        {
            _hits++;
        }
        if (ReportsMetrics)
        {
            (hit ? MoeGrainsMetrics.OffloadHits : MoeGrainsMetrics.OffloadMisses).Add(1);
        }
    }

    // The moegrains.offload.* instruments, when this cache reports to them.
    private void ResidentChanged(long bytes, int experts)
    {
        if (!ReportsMetrics) return;
        MoeGrainsMetrics.OffloadResidentBytes.Add(bytes);
        MoeGrainsMetrics.OffloadResidentExperts.Add(experts);
    }

    private void Loaded(long bytesRead)
    {
        if (!ReportsMetrics) return;
        MoeGrainsMetrics.OffloadLoads.Add(1);
        MoeGrainsMetrics.OffloadBytesRead.Add(bytesRead);
    }

    private Entry Reserve(ExpertId id, long bytes)
    {
        var entry = new Entry(id, bytes) { LastUse = ++_clock };
        _entries[id] = entry;
        _residentBytes += bytes;
        _peakBytes = Math.Max(_peakBytes, _residentBytes);
        _peakExperts = Math.Max(_peakExperts, _entries.Count);
        ResidentChanged(bytes, 1);
        return entry;
    }

    // Loads outside the lock; on failure the reservation is released and the error rethrown.
    private void Fill(Entry entry)
    {
        try
        {
            var (value, read) = _load(entry.Id);
            lock (_gate)
            {
                if (_disposed)
                {
                    value.Dispose();
                    return;
                }
                entry.Value = value;
                entry.Loading = null;
                _bytesRead += read;
            }
            Loaded(read);
        }
        catch (Exception e)
        {
            lock (_gate)
            {
                entry.Error = e;
                if (_entries.TryGetValue(entry.Id, out var current) && ReferenceEquals(current, entry))
                {
                    _entries.Remove(entry.Id);
                    _residentBytes -= entry.Bytes;
                    ResidentChanged(-entry.Bytes, -1);
                }
            }
            throw;
        }
    }

    // Under the lock: evicts until `bytes` more fit. A prefetch (candidate set) evicts only experts whose next use is
    // predicted later than the candidate's; without a victim it gives up and nothing is evicted.
    private bool MakeRoom(long bytes, ExpertId? candidate)
    {
        var victims = new List<Entry>();
        var count = _entries.Count;
        var resident = _residentBytes;
        var candidates = _entries.Values.Where(e => e.Value is not null && e.Pins == 0).ToList();
        var candidateUse = candidate is { } c ? NextUseOf(c) : double.NegativeInfinity;
        while (count + 1 > Budget.MaxExperts || resident + bytes > Budget.MaxBytes)
        {
            var victim = ChooseVictim(candidates);
            if (victim is null || (candidate is not null && NextUseOf(victim.Id) <= candidateUse))
            {
                return false;
            }
            candidates.Remove(victim);
            victims.Add(victim);
            count--;
            resident -= victim.Bytes;
        }
        foreach (var v in victims)
        {
            _entries.Remove(v.Id);
            _residentBytes -= v.Bytes;
            _evictions++;
            ResidentChanged(-v.Bytes, -1);
            v.Value?.Dispose();
            v.Value = null;
        }
        return true;
    }

    private double NextUseOf(ExpertId id) => NextUse?.Invoke(id) ?? 0;

    private Entry? ChooseVictim(List<Entry> candidates)
    {
        if (candidates.Count == 0)
        {
            return null;
        }
        return Policy switch
        {
            ExpertCachePolicy.Lru => candidates.MinBy(e => e.LastUse),
            ExpertCachePolicy.Lfu => candidates.OrderBy(e => _frequency.GetValueOrDefault(e.Id)).ThenBy(e => e.LastUse).First(),
            _ => candidates.OrderByDescending(e => NextUseOf(e.Id)).ThenBy(e => e.LastUse).First(),
        };
    }

    public void Dispose()
    {
        Task[] loading;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            loading = [.. _entries.Values.Select(e => e.Loading).OfType<Task>()];
        }
        try
        {
            Task.WaitAll(loading);
        }
        catch (AggregateException)
        {
        }
        lock (_gate)
        {
            foreach (var e in _entries.Values)
            {
                e.Value?.Dispose();
                ResidentChanged(-e.Bytes, -1);
            }
            _entries.Clear();
            _residentBytes = 0;
        }
    }
}
