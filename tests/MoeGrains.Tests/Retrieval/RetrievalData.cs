using MoeGrains.Hosting;

namespace MoeGrains.Tests.Retrieval;

/// <summary>The SMART collections under the shared data folder.</summary>
internal static class RetrievalData
{
    public static string Collection(string name) => SharedData.Directory("ir", name);
}
