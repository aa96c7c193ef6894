using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Diagnostics;
using MoeGrains.Dispatch;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Reliability;
using Orleans.Concurrency;

namespace MoeGrains.Grains;

/// <summary>
/// The grain dispatcher: one MoE layer step as a message flow. Validates the batch, routes it (local router worker),
/// sends each chosen expert grain one batch concurrently with a deadline, and combines the answers.
/// </summary>
/// <remarks>
/// Reentrant: requests that arrive while a pass of the same layer is in flight wait in the silo's
/// <see cref="LayerRequestCoalescer"/> and are served together by the next pass (continuous batching).
/// </remarks>
[StatelessWorker]
[Reentrant]
internal sealed class MoeLayerGrain(
    ModelCatalog models, SiloDevice device, ExpertCircuitBreakers breakers, IOptions<MoeGrainsOptions> options, IOptions<TensorWireOptions> wire,
    LayerRequestCoalescer coalescer, Offload.SiloExpertCache offload, RoutingTraceSink? traces = null, ExpertPlacementPlans? plans = null)
    : Grain, IMoeLayerGrain
{
    // Per layer (a counter shared by all layers would advance by the layer count per decoded token and keep sending a
    // layer's single tokens to the same replica).
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> Rotations = new(StringComparer.Ordinal);

    public Task<MoeLayerResult> Forward(MoeLayerRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var o = options.Value;
        return coalescer.RunAsync(this.GetPrimaryKeyString(), request, ForwardAlone, Math.Min(o.MaxBatchTokens, o.MaxTokensPerRequest), device.Lane, cancellationToken);
    }

    private async Task<MoeLayerResult> ForwardAlone(MoeLayerRequest request, CancellationToken cancellationToken)
    {
        var (model, layer) = ExpertKey.ParseLayer(this.GetPrimaryKeyString());
        var spec = models.Check(model, layer);
        var hidden = request.Hidden;
        if (hidden.Shape.Count != 2 || hidden.Shape[1] != spec.DModel)
        {
            throw new TensorValidationException($"Layer '{this.GetPrimaryKeyString()}' expects hidden states [tokens, {spec.DModel}], got [{string.Join(", ", hidden.Shape)}].");
        }
        if (hidden.Shape[0] > options.Value.MaxTokensPerRequest)
        {
            throw new TensorValidationException($"{hidden.Shape[0]} tokens exceed the limit of {options.Value.MaxTokensPerRequest} per request.");
        }
        if (request.KMin < 1 || request.KMin > spec.Experts)
        {
            throw new TensorValidationException($"k_min must be between 1 and {spec.Experts}, got {request.KMin}.");
        }
        if (request.TokenIds is { } ids && ids.Length != hidden.Shape[0])
        {
            throw new TensorValidationException($"{ids.Length} token ids for {hidden.Shape[0]} rows of hidden states.");
        }
        if (request.Vocabulary is { } vocabulary && vocabulary.Length != hidden.Shape[0])
        {
            throw new TensorValidationException($"Vocabulary: {vocabulary.Length} vocabulary token ids for {hidden.Shape[0]} rows of hidden states.");
        }
        var blocked = breakers.Blocked(model, layer, spec.Experts);
        var masked = (request.MaskedExperts ?? []).Concat(blocked).ToArray();
        DeviceLane.CurrentTicket(); // oldest request first on every device this request reaches
        var available = Routing.Availability(spec.Experts, masked);
        if (available.AvailableCount == 0)
        {
            throw new ExpertQuorumException(
                $"No expert of layer '{this.GetPrimaryKeyString()}' is available (masked: {string.Join(", ", request.MaskedExperts ?? [])}; breakers open: {string.Join(", ", blocked)}).",
                [.. blocked]);
        }

        // No dispose scope here: TorchSharp's scopes are per thread, and this method awaits. Tensor work runs on the
        // device lane's thread.
        var lane = device.Lane;
        using var x = await lane.RunAsync(() => hidden.ToTensor(device.Device), cancellationToken);
        if (!await lane.RunAsync(() => TensorChecks.AllFinite(x), cancellationToken))
        {
            throw new TensorValidationException($"Layer '{this.GetPrimaryKeyString()}' received non-finite values (NaN or Inf).");
        }
        var routing = await GrainFactory.GetGrain<IRouterGrain>(this.GetPrimaryKeyString())
            .Route(hidden, masked.Length == 0 ? null : [.. available.AsList()], request.Router);
        if (traces is not null && request.TokenIds is { } tokenIds && traces.Record(model, layer, tokenIds, routing, request.Vocabulary) is { } sampled)
        {
            await traces.PublishAsync(ServiceProvider, sampled);
        }
        if (offload.PrefetchEnabled && layer + 1 < spec.Layers)
        {
            HintNextLayer(model, layer, routing, request.Vocabulary);
        }
        var wireType = hidden.DType == TensorDType.Int8 ? wire.Value.HiddenDType : hidden.DType;
        var timeout = TimeSpan.FromMilliseconds(request.ExpertTimeoutMs > 0 ? request.ExpertTimeoutMs : options.Value.ExpertTimeoutMs);
        var here = RuntimeIdentity;
        MoeLayerOutput result;
        try
        {
            // Hot-expert replication: a replicated expert's tokens are split over its replicas (the layer's rotation
            // spreads single-token steps over them; the output does not depend on it).
            var replicas = plans?.ReplicaCounts(model, layer);
            result = await MoeLayerRunner.RunAsync(x, routing, spec.Experts, spec.DModel, async (e, r, batch, ct) =>
        {
            var payload = await lane.RunAsync(() => WireTensor.FromTensor(batch, wireType, wire.Value.MaxTensorBytes), ct);
            var answer = await ExpertMoves.CallAsync(GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Replica(model, layer, e, r)), payload, ct);
            var remote = answer.Silo != here;
            var bytes = remote ? payload.WireBytes + answer.Output.WireBytes : 0;
            MoeGrainsMetrics.ExpertCalls.Add(1, new KeyValuePair<string, object?>("remote", remote));
            MoeGrainsMetrics.CrossSiloBytes.Add(bytes);
            var y = await lane.RunAsync(() => answer.Output.ToTensor(device.Device), ct);
            return new ExpertAnswer(y, answer.Silo, answer.ComputeMs, bytes);
        }, replicas, replicas is null ? 0 : Rotations.AddOrUpdate(this.GetPrimaryKeyString(), 1, (_, n) => n + 1), request.KMin, timeout, cancellationToken, lane);
        }
        catch (ExpertQuorumException e)
        {
            foreach (var failed in e.FailedExperts) breakers.Record(model, layer, failed, success: false);
            throw;
        }
        using var _ = result;
        // Breakers learn from the outcome the request saw, once per expert (a full queue says nothing about an expert's
        // health). A replicated expert has a call per replica: one that failed fails the expert, as it does in the
        // combination, so a dead replica is not cancelled out by its healthy siblings.
        foreach (var calls in result.Calls.GroupBy(c => c.Expert))
        {
            if (calls.Any(c => c.Error is not null && !c.Error.Contains(nameof(OverloadedException), StringComparison.Ordinal)))
            {
                breakers.Record(model, layer, calls.Key, success: false);
            }
            else if (calls.Any(c => c.Error is null))
            {
                breakers.Record(model, layer, calls.Key, success: true);
            }
        }

        var output = await lane.RunAsync(() => WireTensor.FromTensor(result.Output, hidden.DType == TensorDType.Int8 ? TensorDType.Float32 : hidden.DType, wire.Value.MaxTensorBytes));
        return new MoeLayerResult(output, result.Calls, here, result.CrossSiloBytes, result.Calls.Length, result.FailedExperts) { BlockedExperts = [.. blocked] };
    }

    // Expert prefetch (predictive policy with a routing-path predictor for the model): the next layer's likely experts, as
    // many as the budget holds beside this step's own, get a one-way hint at each of their replicas, so their silos read
    // them while this layer computes. Hints change no result; one that cannot be sent is dropped.
    private void HintNextLayer(string model, int layer, RoutingResult routing, long[]? vocabulary)
    {
        try
        {
            if (offload.Predictors.Get(model) is not { } predictor)
            {
                return;
            }
            var needed = routing.Experts.Where(e => e >= 0).Distinct().Order().ToArray();
            var chosen = Offload.SiloRoutePredictors.NextLayer(predictor, layer, routing, vocabulary, offload.PrefetchThreshold,
                offload.PrefetchRoom(model, layer, needed));
            if (chosen.Length == 0)
            {
                return;
            }
            var replicas = plans?.ReplicaCounts(model, layer + 1);
            var sent = 0;
            foreach (var (e, p) in chosen)
            {
                var hint = new ExpertPrefetchHint(p, layer, needed);
                var count = replicas is not null && e < replicas.Count ? Math.Max(1, replicas[e]) : 1;
                for (var r = 0; r < count; r++)
                {
                    _ = GrainFactory.GetGrain<IExpertGrain>(ExpertKey.Replica(model, layer + 1, e, r)).Prefetch(hint);
                    sent++;
                }
            }
            offload.CountHintsSent(sent);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // Hints are optional (a predictor that does not fit, a store that cannot be read): no prefetch for this
            // step, and the forward pass goes on.
            offload.HintsDropped(model, layer, e);
        }
    }
}
