using TorchSharp;

namespace MoeGrains;

/// <summary>An embedding expert for retrieval: encodes queries and documents into one vector space.</summary>
public interface IRetrieverExpert : IDisposable
{
    ExpertDescriptor Descriptor { get; }

    /// <summary>Encodes texts into <c>[count, dim]</c> embeddings; queries and documents may be encoded differently.</summary>
    torch.Tensor Encode(IReadOnlyList<string> texts, EncodeRole role);
}

/// <summary>Whether a text is a query or a document (asymmetric encoders treat them differently).</summary>
public enum EncodeRole
{
    Query,
    Document,
}
