using MoeGrains.Retrieval;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

public sealed class LinearAdapterExpertTests
{
    private sealed class NoEncoder(int dim) : IRetrieverExpert
    {
        public ExpertDescriptor Descriptor { get; } = new("base", ExpertKind.Retriever, 0, dim, 0, "float32");

        public Tensor Encode(IReadOnlyList<string> texts, EncodeRole role) => throw new NotSupportedException();

        public void Dispose()
        {
        }
    }

    private static double TopOneAccuracy(Tensor queries, Tensor documents)
    {
        using var scope = NewDisposeScope();
        var best = queries.matmul(documents.t()).argmax(1);
        return best.eq(arange(queries.shape[0])).to_type(ScalarType.Float32).mean().item<float>();
    }

    [Fact]
    public void InfoNCE_training_learns_the_map_from_pseudo_queries_to_their_documents()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(7);
        const int n = 256, dim = 16;
        var documents = nn.functional.normalize(randn([n, dim], generator: gen), dim: 1);
        // The domain's queries are a mixed-up view of their documents: the frozen encoder alone matches them poorly.
        var mix = eye(dim) * 0.2 + randn([dim, dim], generator: gen) * 0.5;
        var queries = nn.functional.normalize(documents.matmul(mix) + randn([n, dim], generator: gen) * 0.05, dim: 1);
        var before = TopOneAccuracy(queries, documents);

        var (weight, loss) = LinearAdapterExpert.Train(queries, documents, new AdapterTrainingOptions { Epochs = 60, BatchSize = 64, LearningRate = 1e-2 });
        using var adapter = new LinearAdapterExpert("adapter-test", new NoEncoder(dim), weight);
        var after = TopOneAccuracy(adapter.AdaptQueries(queries), documents);

        Assert.True(after > before + 0.3, $"top-1 accuracy {before:F2} before, {after:F2} after training (loss {loss:F3})");
        Assert.Equal(dim, adapter.Descriptor.OutputDim);
        Assert.Throws<ArgumentException>(() => new LinearAdapterExpert("bad", new NoEncoder(dim), eye(dim + 1)));
    }

    [Fact]
    public void Pseudo_queries_are_titles_or_first_sentences()
    {
        Assert.Equal("Dewey classification", LinearAdapterExpert.PseudoQuery(new RetrievalDocument("1", "Dewey classification", "body. more")));
        Assert.Equal("correlation between maternal and fetal glucose",
            LinearAdapterExpert.PseudoQuery(new RetrievalDocument("1", "", "correlation between maternal and fetal glucose . the levels were")));
        Assert.Equal("", LinearAdapterExpert.PseudoQuery(new RetrievalDocument("1", "", "")));
    }
}
