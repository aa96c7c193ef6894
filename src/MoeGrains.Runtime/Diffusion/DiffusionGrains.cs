using MoeGrains.Contracts;

namespace MoeGrains.Diffusion;

/// <summary>
/// One expert of a served decentralized diffusion model, on its silo's device; its weights are its own checkpoint.
/// Key: <c>model/expert</c>. Placed by <see cref="DiffusionPlacementStrategy"/>: expert k on silo k mod n.
/// </summary>
[Alias("moegrains.IDiffusionExpertGrain")]
public interface IDiffusionExpertGrain : IGrainWithStringKey
{
    /// <summary>The velocity for images <c>[batch, 1, s, s]</c> at times <c>[batch]</c>.</summary>
    [Alias("velocity")]
    Task<DiffusionResult> PredictVelocity(WireTensor noisy, WireTensor time);

    [Alias("describe")]
    Task<DiffusionExpertInfo> Describe();

    public static string Key(string model, int expert) => $"{model}/{expert}";
}

/// <summary>The router of a served diffusion model, as a stateless worker on each silo that samples. Key: the model.</summary>
[Alias("moegrains.IDiffusionRouterGrain")]
public interface IDiffusionRouterGrain : IGrainWithStringKey
{
    [Alias("logits")]
    Task<WireTensor> Logits(WireTensor noisy, WireTensor time);

    [Alias("flops")]
    Task<long> FlopsPerImage();
}

[GenerateSerializer, Immutable, Alias("moegrains.DiffusionResult")]
public sealed record DiffusionResult([property: Id(0)] WireTensor Velocity, [property: Id(1)] string Silo);

[GenerateSerializer, Immutable, Alias("moegrains.DiffusionExpertInfo")]
public sealed record DiffusionExpertInfo(
    [property: Id(0)] string Key,
    [property: Id(1)] string Plugin,
    [property: Id(2)] string Silo,
    [property: Id(3)] int ImageSize,
    [property: Id(4)] long FlopsPerImage,
    [property: Id(5)] long ParameterBytes);

/// <summary>A sampling request: how many images, how many Euler steps, how many experts per image (0: all), the noise seed.</summary>
[GenerateSerializer, Immutable, Alias("moegrains.DiffusionSampleRequest")]
public sealed record DiffusionSampleRequest(
    [property: Id(0)] int Count,
    [property: Id(1)] int Steps,
    [property: Id(2)] int TopK,
    [property: Id(3)] long Seed)
{
    public const int MaxCount = 256;
    public const int MaxSteps = 200;

    /// <summary>Refuses bad requests with an error naming the field.</summary>
    public void Validate(int experts)
    {
        if (Count is < 1 or > MaxCount) throw new DiffusionRequestException("n", $"n must be 1..{MaxCount}, got {Count}.");
        if (Steps is < 1 or > MaxSteps) throw new DiffusionRequestException("steps", $"steps must be 1..{MaxSteps}, got {Steps}.");
        if (TopK < 0 || TopK > experts) throw new DiffusionRequestException("top_k", $"top_k must be 0 (all) .. {experts}, got {TopK}.");
    }
}

/// <summary>A diffusion request that is out of range (count, steps, k, image size); <see cref="Field"/> names the field when there is one.</summary>
[GenerateSerializer, Alias("moegrains.DiffusionRequestException")]
public sealed class DiffusionRequestException : MoeGrainsException
{
    public DiffusionRequestException() { }

    public DiffusionRequestException(string message) : base(message) { }

    public DiffusionRequestException(string message, Exception inner) : base(message, inner) { }

    public DiffusionRequestException(string field, string message) : base(message)
    {
        Field = field;
    }

    /// <summary>The request field that was wrong (<c>n</c>, <c>steps</c>, <c>top_k</c>, ...), or empty.</summary>
    [Id(0)] public string Field { get; init; } = "";
}
