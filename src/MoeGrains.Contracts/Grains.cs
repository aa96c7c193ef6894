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
}

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

    [Alias("model")]
    Task<ModelInfo> Model(string model);
}

/// <summary>Grain keys, built and parsed in one place.</summary>
public static class ExpertKey
{
    public static string Expert(string model, int layer, int expert) => $"{model}/{layer}/{expert}";

    public static string Layer(string model, int layer) => $"{model}/{layer}";

    public static (string Model, int Layer, int Expert) ParseExpert(string key)
    {
        var parts = key.Split('/');
        if (parts.Length != 3 || !int.TryParse(parts[1], out var layer) || !int.TryParse(parts[2], out var expert))
        {
            throw new UnknownExpertException($"'{key}' is not an expert key (model/layer/expert).");
        }
        return (parts[0], layer, expert);
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
