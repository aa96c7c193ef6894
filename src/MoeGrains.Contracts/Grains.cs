namespace MoeGrains.Contracts;

/// <summary>
/// Hosts one expert of one layer of one model, on its silo's device. Key: <see cref="ExpertKey"/> (<c>model/layer/expert</c>).
/// The expert's weights are loaded from the model's checkpoint on activation.
/// </summary>
[Alias("moegrains.IExpertGrain")]
public interface IExpertGrain : IGrainWithStringKey
{
    /// <summary>Runs the expert on one batch (all the tokens routed to it in one layer step).</summary>
    [Alias("forward")]
    Task<ExpertResult> Forward(WireTensor hidden, CancellationToken cancellationToken = default);

    [Alias("describe")]
    Task<ExpertInfo> Describe();

    /// <summary>
    /// A hint that this expert is likely to be needed soon (the previous layer has routed): with a device budget and the
    /// predictive policy (<c>MoeGrains:Offload</c>), the silo's expert cache starts reading its weights into host memory
    /// in the background, if the policy judges it worth what it would evict. Computes nothing, changes no result; ignored
    /// where offloading is off. One-way.
    /// </summary>
    [Orleans.Concurrency.OneWay, Alias("prefetch")]
    Task Prefetch(ExpertPrefetchHint hint);
}

/// <summary>
/// Why an expert is prefetched: the predicted probability that the coming layer step uses it, and the experts of the
/// layer step running now (<see cref="RunningLayer"/>), which the cache must not evict for it.
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.ExpertPrefetchHint")]
public sealed record ExpertPrefetchHint(
    [property: Id(0)] double Probability,
    [property: Id(1)] int RunningLayer,
    [property: Id(2)] int[] RunningExperts);

/// <summary>
/// The router of one layer, as a stateless worker (a local activation on every silo that routes). Key: <c>model/layer</c>.
/// </summary>
[Alias("moegrains.IRouterGrain")]
public interface IRouterGrain : IGrainWithStringKey
{
    [Alias("route")]
    Task<RoutingResult> Route(WireTensor hidden, bool[]? available, string? router = null);
}

/// <summary>
/// One mixture-of-experts layer as a message flow: route, send each chosen expert one batch, combine. A stateless
/// worker: it runs on the silo that calls it. Key: <c>model/layer</c>.
/// </summary>
[Alias("moegrains.IMoeLayerGrain")]
public interface IMoeLayerGrain : IGrainWithStringKey
{
    [Alias("forward")]
    Task<MoeLayerResult> Forward(MoeLayerRequest request, CancellationToken cancellationToken = default);
}

/// <summary>Cluster-wide facts: which silos exist, what devices they have, which models are served.</summary>
[Alias("moegrains.IClusterInfoGrain")]
public interface IClusterInfoGrain : IGrainWithIntegerKey
{
    [Alias("silos")]
    Task<SiloDeviceInfo[]> Silos();

    /// <summary>The active silos as the answering silo's own membership view has them (no remote call: it answers even while a silo is dying).</summary>
    [Alias("local-view")]
    Task<string[]> ActiveSilosLocalView();

    [Alias("model")]
    Task<ModelInfo> Model(string model);
}

/// <summary>Grain keys, built and parsed in one place.</summary>
public static class ExpertKey
{
    public static string Expert(string model, int layer, int expert) => $"{model}/{layer}/{expert}";

    public static string Layer(string model, int layer) => $"{model}/{layer}";

    /// <summary>
    /// The key of replica <paramref name="replica"/> of an expert (hot-expert replication): replica 0 is the expert's own
    /// grain (<see cref="Expert"/>), replica r &gt; 0 is <c>model/layer/expert/r</c>, the same weights on another activation.
    /// </summary>
    public static string Replica(string model, int layer, int expert, int replica) =>
        replica == 0 ? Expert(model, layer, expert) : $"{model}/{layer}/{expert}/{replica}";

    /// <summary>Replica indices are below this (a bound on the activations a key can ask for).</summary>
    public const int MAX_REPLICAS = 64;

    /// <summary>Parses an expert key, with or without a replica index (the replica's expert is returned).</summary>
    public static (string Model, int Layer, int Expert) ParseExpert(string key)
    {
        var (model, layer, expert, _) = ParseReplica(key);
        return (model, layer, expert);
    }

    /// <summary>Parses <c>model/layer/expert</c> (replica 0) or <c>model/layer/expert/replica</c>.</summary>
    public static (string Model, int Layer, int Expert, int Replica) ParseReplica(string key)
    {
        var parts = key.Split('/');
        var replica = 0;
        if (parts.Length is not (3 or 4) || !int.TryParse(parts[1], out var layer) || !int.TryParse(parts[2], out var expert)
            || (parts.Length == 4 && (!int.TryParse(parts[3], out replica) || replica < 1 || replica >= MAX_REPLICAS)))
        {
            throw new UnknownExpertException($"'{key}' is not an expert key (model/layer/expert, or model/layer/expert/replica with replica 1..{MAX_REPLICAS - 1}).");
        }
        return (parts[0], layer, expert, replica);
    }

    public static (string Model, int Layer) ParseLayer(string key)
    {
        var parts = key.Split('/');
        if (parts.Length != 2 || !int.TryParse(parts[1], out var layer))
        {
            throw new UnknownExpertException($"'{key}' is not a layer key (model/layer).");
        }
        return (parts[0], layer);
    }
}
