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
}
