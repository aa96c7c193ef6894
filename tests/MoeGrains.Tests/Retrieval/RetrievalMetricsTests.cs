using MoeGrains.Retrieval;

namespace MoeGrains.Tests.Retrieval;

public sealed class RetrievalMetricsTests
{
    private static HashSet<string> Set(params string[] ids) => [.. ids];

    [Fact]
    public void Ndcg_of_a_ranking_with_gaps_matches_the_hand_computed_value()
    {
        // Relevant at ranks 1 and 3: DCG = 1 + 1/log2(4) = 1.5; ideal (ranks 1, 2) = 1 + 1/log2(3) = 1.63093.
        var ndcg = RetrievalMetrics.NdcgAt(["a", "x", "c", "y"], Set("a", "c"), 10);
        Assert.Equal(1.5 / (1 + 1 / Math.Log2(3)), ndcg, 12);
        Assert.Equal(0.919721, ndcg, 5);
    }

    [Fact]
    public void Ndcg_is_one_for_the_ideal_ranking_and_zero_without_hits()
    {
        Assert.Equal(1.0, RetrievalMetrics.NdcgAt(["a", "b", "x"], Set("a", "b"), 10), 12);
        Assert.Equal(0.0, RetrievalMetrics.NdcgAt(["x", "y"], Set("a"), 10));
        Assert.Equal(0.0, RetrievalMetrics.NdcgAt([], Set("a"), 10));
        Assert.Equal(0.0, RetrievalMetrics.NdcgAt(["a"], Set(), 10));
    }

    [Fact]
    public void Ndcg_counts_only_the_first_k_and_its_ideal_is_cut_at_k()
    {
        // 3 relevant, k = 2: only the hit at rank 2 counts; the ideal holds 2 relevant documents, not 3.
        var ndcg = RetrievalMetrics.NdcgAt(["x", "a", "b", "c"], Set("a", "b", "c"), 2);
        Assert.Equal((1 / Math.Log2(3)) / (1 + 1 / Math.Log2(3)), ndcg, 12);
        Assert.Equal(0.386853, ndcg, 5);
    }

    [Fact]
    public void A_document_listed_twice_counts_once()
    {
        Assert.Equal(1.0 / (1 + 1 / Math.Log2(3)), RetrievalMetrics.NdcgAt(["a", "a"], Set("a", "b"), 10), 12);
        Assert.Equal(0.5, RetrievalMetrics.RecallAt(["a", "a", "x"], Set("a", "b"), 100));
    }

    [Fact]
    public void Recall_is_the_share_of_relevant_documents_in_the_first_k()
    {
        Assert.Equal(0.5, RetrievalMetrics.RecallAt(["a", "x", "b", "c"], Set("a", "c", "d", "e"), 100));
        Assert.Equal(0.25, RetrievalMetrics.RecallAt(["a", "x", "b", "c"], Set("a", "c", "d", "e"), 3));
        Assert.Equal(1.0, RetrievalMetrics.RecallAt(["c", "a"], Set("a", "c"), 2));
    }

    [Fact]
    public void A_k_below_one_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => RetrievalMetrics.NdcgAt(["a"], Set("a"), 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => RetrievalMetrics.RecallAt(["a"], Set("a"), 0));
    }
}
