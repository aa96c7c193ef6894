using MoeGrains.Retrieval;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

public sealed class ExactIndexTests
{
    /// <summary>An embedding expert over a fixed vocabulary: counts of the words "heart", "rocket", "library".</summary>
    internal sealed class CountingExpert : IRetrieverExpert
    {
        private static readonly string[] Words = ["heart", "rocket", "library"];

        public ExpertDescriptor Descriptor { get; } = new("counting", ExpertKind.Retriever, 0, 3, 0, "float32");

        public Tensor Encode(IReadOnlyList<string> texts, EncodeRole role) =>
            tensor(texts.SelectMany(t => Words.Select(w => (float)t.Split(' ').Count(x => x == w))).ToArray(), [texts.Count, Words.Length]);

        public void Dispose()
        {
        }
    }

    [Fact]
    public void The_default_index_of_an_embedding_expert_searches_exactly_by_inner_product()
    {
        IRetrieverExpert expert = new CountingExpert();
        using var index = expert.Index(["heart heart", "rocket", "heart rocket rocket", "library"]);
        Assert.Equal(4, index.Count);
        var hits = index.Search(["rocket", "heart library"], 2);
        Assert.Equal([2, 1], hits[0].Documents);
        Assert.Equal([2f, 1f], hits[0].Scores);
        Assert.Equal(0, hits[1].Documents[0]);
        Assert.Equal(2f, hits[1].Scores[0]);
    }

    [Fact]
    public void A_k_larger_than_the_corpus_returns_every_document_and_a_k_below_one_is_refused()
    {
        IRetrieverExpert expert = new CountingExpert();
        using var index = expert.Index(["heart", "rocket"]);
        Assert.Equal(2, index.Search(["heart"], 1_000_000)[0].Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => index.Search(["heart"], 0));
    }
}
