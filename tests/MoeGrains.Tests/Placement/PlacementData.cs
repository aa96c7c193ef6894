using MoeGrains.Hosting;

namespace MoeGrains.Tests.Placement;

/// <summary>The placement tests' files in the shared data folder.</summary>
internal static class PlacementData
{
    public static string MixtralCrossLayerCounts => SharedData.File("traces", "mixtral_crosslayer_counts.csv");

    public static string File(params string[] parts) => SharedData.File(parts);
}
