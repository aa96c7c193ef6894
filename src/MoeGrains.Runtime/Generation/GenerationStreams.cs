using MoeGrains.Contracts;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Orleans.Runtime;
using Orleans.Streams;

namespace MoeGrains.Generation;

/// <summary>Why a generation ended.</summary>
public enum FinishReason
{
    /// <summary>max tokens were generated.</summary>
    Length,

    /// <summary>The stop token was generated.</summary>
    Stop,

    /// <summary>It failed or was cancelled; <see cref="GenerationEvent.Error"/> says why.</summary>
    Error,
}

/// <summary>
/// One event of a generation stream: a token (<see cref="Sequence"/> 0, 1, 2, ... in the order generated) or, last, the
/// end marker (<see cref="Finish"/> set, <see cref="Token"/> -1, <see cref="Sequence"/> one past the last token).
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.GenerationEvent")]
public sealed record GenerationEvent([property: Id(0)] long Sequence, [property: Id(1)] int Token)
{
    /// <summary>Set on the end marker only.</summary>
    [Id(2)] public FinishReason? Finish { get; init; }

    /// <summary>On an end marker with <see cref="FinishReason.Error"/>: what went wrong.</summary>
    [Id(3)] public string? Error { get; init; }

    /// <summary>On the end marker: (token, expert) pairs computed per layer over the session, divided by the tokens fed.</summary>
    [Id(4)] public double[] ExpertsPerToken { get; init; } = [];

    /// <summary>On the end marker: the silo that ran the backbone.</summary>
    [Id(5)] public string? Silo { get; init; }

    public bool IsEnd => Finish is not null;

    public static GenerationEvent End(long sequence, FinishReason reason, string? error = null) => new(sequence, -1) { Finish = reason, Error = error };
}

/// <summary>What <see cref="IDecoderSessionGrain.Generate"/> accepted.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.GenerationStarted")]
public sealed record GenerationStarted(
    [property: Id(0)] int PromptTokens,
    [property: Id(1)] int ContextLength,
    [property: Id(2)] string Silo);

/// <summary>
/// Token streaming through Orleans streams: a decoder session grain publishes each generated token, with its sequence
/// number, then an end marker, on the stream <see cref="Id"/> of its key; a consumer subscribes before asking the grain
/// to start, so it sees every event. Memory streams (<see cref="ProviderName"/>) are set up by <c>AddMoeGrains</c>
/// on silos and by the client API on external clients.
/// </summary>
public static class GenerationStreams
{
    public const string ProviderName = "moegrains-generation";
    public const string Namespace = "moegrains.generation";

    /// <summary>Subscriptions of memory streams are kept in a grain storage of this name (Orleans' convention).</summary>
    public const string PubSubStore = "PubSubStore";

    /// <summary>Queues of the memory stream provider.</summary>
    public const int QUEUES = 2;

    /// <summary>How often a pulling agent looks for new events in its queue.</summary>
    public static readonly TimeSpan PollPeriod = TimeSpan.FromMilliseconds(25);

    /// <summary>How long a session grain waits for one event's stream publication (normally milliseconds) before generation goes on.</summary>
    public static readonly TimeSpan PublishWait = TimeSpan.FromSeconds(1);

    /// <summary>A consumer that has seen no event for this long asks the session grain for what it missed.</summary>
    public static readonly TimeSpan ReplayAfter = TimeSpan.FromSeconds(2);

    /// <summary>How long a consumer waits for the session's answer to one replay question.</summary>
    public static readonly TimeSpan ReplayWait = TimeSpan.FromSeconds(3);

    /// <summary>Replay questions left unanswered in a row before the consumer gives up with a <see cref="TimeoutException"/>.</summary>
    public const int ReplayAttempts = 3;

    public static StreamId Id(string sessionKey) => StreamId.Create(Namespace, sessionKey);

    /// <summary>
    /// Starts a new session of <paramref name="model"/> that generates from <paramref name="prompt"/> and yields its events
    /// as they arrive, the end marker last; the session is closed when the enumeration ends or is abandoned. The request
    /// is checked before anything is called; the grain checks the model, router and context again. <paramref name="started"/>,
    /// when given, learns what the grain accepted (prompt tokens, context, the silo that holds the session) before the
    /// first event.
    /// </summary>
    public static async IAsyncEnumerable<GenerationEvent> GenerateAsync(IClusterClient client, string model, int[] prompt, GenerationOptions options,
        string? router = null, [EnumeratorCancellation] CancellationToken cancellationToken = default, Action<GenerationStarted>? started = null)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(model))
        {
            throw new GenerationRequestException(GenerationRequestValidator.ModelField, "model is required.");
        }
        GenerationRequestValidator.CheckPromptTokens(prompt.Length, int.MaxValue);
        GenerationRequestValidator.CheckOptions(options);

        var key = IDecoderSessionGrain.Key(model, Guid.NewGuid().ToString("N"));
        var events = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true });
        var stream = client.GetStreamProvider(ProviderName).GetStream<GenerationEvent>(Id(key));
        var subscription = await stream.SubscribeAsync(
            (e, _) => { events.Writer.TryWrite(e); return Task.CompletedTask; },
            e => { events.Writer.TryComplete(new InvalidOperationException("The generation stream failed.", e)); return Task.CompletedTask; },
            () => { events.Writer.TryComplete(); return Task.CompletedTask; }).ConfigureAwait(false);
        var grain = client.GetGrain<IDecoderSessionGrain>(key);
        InOrderEvents? consumer = null;
        try
        {
            var accepted = await grain.Generate(prompt, options, router, cancellationToken).ConfigureAwait(false);
            started?.Invoke(accepted);
            consumer = new InOrderEvents(client, grain, key, accepted.Silo, events.Reader);
            while (true)
            {
                foreach (var e in await consumer.NextAsync(cancellationToken).ConfigureAwait(false))
                {
                    yield return e;
                    if (e.IsEnd)
                    {
                        yield break;
                    }
                }
            }
        }
        finally
        {
            try
            {
                await subscription.UnsubscribeAsync().ConfigureAwait(false);
            }
            finally
            {
                if (consumer?.Reachable ?? true)
                {
                    await grain.Close().ConfigureAwait(false);
                }
            }
        }
    }

    /// <summary>
    /// A consumer's view of one session's events, yielded strictly in sequence order. The stream delivers them in order;
    /// one it lost shows up as a gap (or, for the end marker, as silence), and the grain's own record fills it. A session
    /// that stops answering is lost once membership says its silo left, or after <see cref="ReplayAttempts"/> questions.
    /// </summary>
    private sealed class InOrderEvents(IClusterClient client, IDecoderSessionGrain grain, string key, string silo, ChannelReader<GenerationEvent> events)
    {
        private readonly SortedDictionary<long, GenerationEvent> _pending = [];
        private long _next;
        private bool _streamOpen = true;
        private int _unanswered;

        /// <summary>False once the session is known lost or out of reach: there is nothing left to close.</summary>
        public bool Reachable { get; private set; } = true;

        /// <summary>Waits for the stream (or, after <see cref="ReplayAfter"/> of silence, the grain's record); returns the events now in order (maybe none).</summary>
        public async Task<List<GenerationEvent>> NextAsync(CancellationToken cancellationToken)
        {
            var received = await ReceiveAsync(cancellationToken).ConfigureAwait(false);
            if (received is not null && received.Sequence >= _next)
            {
                _pending.TryAdd(received.Sequence, received);
            }
            if (received is null || (_pending.Count > 0 && _pending.Keys.First() > _next))
            {
                foreach (var e in await ReplayAsync(cancellationToken).ConfigureAwait(false))
                {
                    _pending.TryAdd(e.Sequence, e);
                }
            }
            var ready = new List<GenerationEvent>();
            while (_pending.Remove(_next, out var e))
            {
                ready.Add(e);
                _next++;
                if (e.IsEnd)
                {
                    break;
                }
            }
            return ready;
        }

        private async Task<GenerationEvent?> ReceiveAsync(CancellationToken cancellationToken)
        {
            if (!_streamOpen)
            {
                await Task.Delay(ReplayAfter, cancellationToken).ConfigureAwait(false);
                return null;
            }
            using var idle = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            idle.CancelAfter(ReplayAfter);
            try
            {
                return await events.ReadAsync(idle.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                return null; // no event for a while: ask the grain
            }
            catch (ChannelClosedException)
            {
                _streamOpen = false; // the subscription failed or ended: the grain's record from now on
                return null;
            }
        }

        private async Task<GenerationEvent[]> ReplayAsync(CancellationToken cancellationToken)
        {
            try
            {
                // A session whose silo just died does not answer until the silo is declared dead (then its fresh
                // activation refuses with SessionLostException): ask again later rather than wait out the whole
                // response timeout, and give up after ReplayAttempts questions without an answer.
                var replayed = await grain.Replay(_next).WaitAsync(ReplayWait, cancellationToken).ConfigureAwait(false);
                _unanswered = 0;
                return replayed;
            }
            catch (TimeoutException)
            {
                // No answer in time: the session's silo may have died. Once membership says so, that is the answer;
                // otherwise ask again later, up to ReplayAttempts times.
                var left = await SiloLeftAsync(client, silo).ConfigureAwait(false);
                if (left || ++_unanswered >= ReplayAttempts)
                {
                    Reachable = false;
                    throw left
                        ? new SessionLostException($"Session '{key}' ran on silo {silo}, which is no longer an active member of the cluster, after the consumer had seen {_next} events; start a new session.")
                        : new TimeoutException($"Session '{key}' did not answer {ReplayAttempts} replay questions of {ReplayWait.TotalSeconds} s each.");
                }
                return [];
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                Reachable = false; // lost with its silo, or out of reach: nothing left to close (a cancelled consumer still closes it)
                throw;
            }
        }
    }

    /// <summary>Whether <paramref name="silo"/> (a silo's runtime identity) is no longer an active member of the cluster.</summary>
    private static async Task<bool> SiloLeftAsync(IClusterClient client, string silo)
    {
        try
        {
            var active = await client.GetGrain<IClusterInfoGrain>(0).ActiveSilosLocalView().WaitAsync(ReplayWait).ConfigureAwait(false);
            return !active.Contains(silo);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return false; // membership unknown: keep asking the session
        }
    }
}

/// <summary>Feeding a remote session step by step, with the check that its state survived between the steps.</summary>
public static class RemoteSession
{
    /// <summary>
    /// A step function over <paramref name="grain"/>'s <c>Append</c> that tracks the position the session must be at: a
    /// session whose silo was lost answers from a fresh activation at position 0, which would silently drop the context,
    /// so a position other than the expected one is a <see cref="SessionLostException"/>.
    /// </summary>
    public static Func<long[], CancellationToken, Task<DecoderStep>> Appender(IDecoderSessionGrain grain, string? router)
    {
        ArgumentNullException.ThrowIfNull(grain);
        long position = 0;
        return async (tokens, cancellationToken) =>
        {
            var step = await grain.Append(tokens, router, cancellationToken).ConfigureAwait(false);
            var expected = position + tokens.Length;
            if (step.Position != expected)
            {
                throw new SessionLostException(
                    $"Session '{grain.GetPrimaryKeyString()}' is at position {step.Position} after a step that should have left it at {expected}: its state was lost (its silo was lost, or it was closed); start a new session.");
            }
            position = expected;
            return step;
        };
    }
}
