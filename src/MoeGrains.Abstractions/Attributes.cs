namespace MoeGrains;

/// <summary>Marks a class as an expert plugin (<see cref="IExpert"/>, <see cref="IRetrieverExpert"/> or <see cref="IDiffusionExpert"/>).</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false, Inherited = false)]
public sealed class ExpertAttribute(string name) : Attribute
{
    /// <summary>The name experts of this type are known by; unique across the plugin folder.</summary>
    public string Name { get; } = name;

    public string? Description { get; init; }
}

/// <summary>Marks a class as a router plugin (<see cref="IRouter"/>).</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false, Inherited = false)]
public sealed class RouterAttribute(string name) : Attribute
{
    public string Name { get; } = name;

    public string? Description { get; init; }

    /// <summary>
    /// The router draws something once per sequence (THOR's expert per sequence): hosts give each sequence its own
    /// instance, created with the setting <see cref="SequenceSeedSetting"/> that fixes the draw.
    /// </summary>
    public bool PerSequence { get; init; }

    /// <summary>The setting that seeds a per-sequence router's draw.</summary>
    public const string SequenceSeedSetting = "sequence_seed";
}
