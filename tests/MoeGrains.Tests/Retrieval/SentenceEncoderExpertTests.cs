using MoeGrains.Retrieval;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

/// <summary>The real encoders shipped in the SentenceTransformers packages, on a handful of texts (CPU encoding is slow).</summary>
public sealed class SentenceEncoderExpertTests
{
    private static readonly string[] Documents =
    [
        "the heart pumps blood through the arteries and veins of the body",
        "supersonic flow over a swept wing at high angles of attack",
        "cataloguing and indexing of books in university libraries",
    ];

    [Theory]
    [InlineData("minilm")]
    [InlineData("arctic-xs")]
    public void Encodes_unit_384_vectors_and_finds_the_matching_document(string name)
    {
        using var expert = RetrieverPlugins.Create(name, new() { ["threads"] = "2" });
        Assert.Equal(384, expert.Descriptor.OutputDim);
        using var embeddings = expert.Encode(Documents, EncodeRole.Document);
        Assert.Equal([3L, 384L], embeddings.shape);
        using var norms = embeddings.norm(1);
        Assert.All(norms.data<float>().ToArray(), n => Assert.Equal(1f, n, 3));

        using var index = expert.Index(Documents);
        var hits = index.Search(["blood circulation in the cardiovascular system", "aerodynamics of aircraft wings", "library classification"], 1);
        Assert.Equal([0, 1, 2], hits.Select(h => h.Documents[0]));
    }

    [Fact]
    public void Texts_are_cut_to_max_words_and_the_order_of_a_batch_does_not_matter()
    {
        using var expert = RetrieverPlugins.Create("minilm", new() { ["threads"] = "2", ["max_words"] = "4", ["batch_size"] = "2" });
        using var a = expert.Encode(["one two three four five six seven", "one two three four"], EncodeRole.Document);
        Assert.True(allclose(a[0], a[1], atol: 1e-5)); // words past the fourth are never read
        using var b = expert.Encode(["x", "a longer text than the first one", "y z"], EncodeRole.Document);
        using var c = expert.Encode(["a longer text than the first one"], EncodeRole.Document);
        Assert.True(allclose(b[1], c[0], atol: 1e-4));
    }
}
