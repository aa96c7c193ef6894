using MoeGrains.Checkpoints;
using MoeGrains.Contracts;
using MoeGrains.Retrieval;
using MoeGrains.Retrieval.Serving;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Retrieval;

/// <summary>Trained domain adapters saved as safetensors, validated when read, and served by the retrieval plugin.</summary>
public sealed class RetrievalAdapterFileTests
{
    /// <summary>Stands for a base encoder where only its name and size matter.</summary>
    internal sealed class FakeBase(string name, int dim) : IRetrieverExpert
    {
        public ExpertDescriptor Descriptor { get; } = new(name, ExpertKind.Retriever, 0, dim, 0, "float32");

        public Tensor Encode(IReadOnlyList<string> texts, EncodeRole role) => throw new NotSupportedException();

        public void Dispose()
        {
        }
    }

    /// <summary>A query map near the identity, fixed by a seed.</summary>
    internal static Tensor Map(int dim, ulong seed = 3)
    {
        using var scope = NewDisposeScope();
        return (eye(dim) + randn([dim, dim], generator: new Generator(seed)) * 0.05f).MoveToOuterDisposeScope();
    }

    /// <summary>Writes <c>{folder}/{name}.safetensors</c>: an adapter on <paramref name="baseExpert"/> with <see cref="Map"/>.</summary>
    internal static string Save(string folder, string name, IRetrieverExpert baseExpert)
    {
        using var map = Map(baseExpert.Descriptor.OutputDim);
        using var adapter = new LinearAdapterExpert(name, baseExpert, map);
        var path = LinearAdapterExpert.FileFor(folder, name);
        adapter.Save(path, "test", new Dictionary<string, string> { ["pairs"] = "0" });
        return path;
    }

    [Fact]
    public void A_saved_adapter_loads_back_the_same_map_on_its_base_only()
    {
        using var temp = TestPaths.Temp();
        using var fake = new FakeBase("fake", 8);
        var path = Save(temp.Path, "adapter-test", fake);
        using var loaded = LinearAdapterExpert.Load(path, fake);
        Assert.Equal("adapter-test", loaded.Descriptor.Name);
        using var probe = nn.functional.normalize(randn([3, 8], generator: new Generator(1)), dim: 1);
        using var map = Map(8);
        using var expected = nn.functional.normalize(probe.matmul(map), dim: 1);
        Assert.True(allclose(expected, loaded.AdaptQueries(probe), atol: 1e-6));
        var file = SafeTensorsFile.Open(path);
        Assert.Equal("fake", file.Metadata[LinearAdapterExpert.BASE_KEY]);
        Assert.Equal("fake-adapter", file.Metadata[LinearAdapterExpert.PLUGIN_KEY]);
        Assert.True(file.HasChecksums);

        using var other = new FakeBase("other", 8);
        Assert.Contains("trained on 'fake'", Assert.Throws<CheckpointException>(() => LinearAdapterExpert.Load(path, other)).Message, StringComparison.Ordinal);
        using var wide = new FakeBase("fake", 16);
        Assert.Contains("[16, 16]", Assert.Throws<CheckpointException>(() => LinearAdapterExpert.Load(path, wide)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Malformed_adapter_files_are_refused_naming_the_file()
    {
        using var temp = TestPaths.Temp();
        var adapterMeta = new Dictionary<string, string> { [LinearAdapterExpert.KIND_KEY] = LinearAdapterExpert.KIND, [LinearAdapterExpert.BASE_KEY] = "fake" };
        void Write(string name, Tensor t, Dictionary<string, string> meta) => SafeTensorsFile.Write(temp.File(name), [new(LinearAdapterExpert.WEIGHT_NAME, t)], meta);
        using (var square = eye(4))
        {
            Write("plain.safetensors", square, []); // an embedding cache file, say: not an adapter
        }
        using (var rect = zeros(4, 3))
        {
            Write("rect.safetensors", rect, adapterMeta);
        }
        using (var nan = full(4, 4, float.NaN))
        {
            Write("nan.safetensors", nan, adapterMeta);
        }
        using (var doubles = eye(4, dtype: ScalarType.Float64))
        {
            Write("f64.safetensors", doubles, adapterMeta);
        }
        File.WriteAllBytes(temp.File("short.safetensors"), [1, 2, 3]);
        var cases = new Dictionary<string, string>
        {
            ["plain.safetensors"] = "not a retrieval adapter",
            ["rect.safetensors"] = "[4, 3]",
            ["nan.safetensors"] = "NaN",
            ["f64.safetensors"] = "F64",
            ["short.safetensors"] = "truncated",
            ["missing.safetensors"] = "does not exist",
        };
        foreach (var (file, expected) in cases)
        {
            var e = Assert.Throws<CheckpointException>(() => LinearAdapterExpert.ReadFile(temp.File(file)));
            Assert.Contains(file, e.Message, StringComparison.Ordinal);
            Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void The_plugin_serves_a_saved_adapter_as_the_evaluation_computes_it()
    {
        using var temp = TestPaths.Temp();
        var settings = new Dictionary<string, string> { ["threads"] = "1", ["max_words"] = "32" };
        using var minilm = RetrieverPlugins.Create("minilm", settings);
        var path = Save(temp.Path, "adapter-med", minilm);

        using var served = RetrieverExperts.Create(RetrieverPlugins.Catalog, "adapter-med", CPU, settings, TinyModel.Services, temp.Path);
        Assert.Equal("adapter-med", served.Descriptor.Name);
        Assert.Equal("minilm", RetrieverExperts.AdapterBase(RetrieverPlugins.Catalog, "adapter-med", temp.Path));
        using var evaluated = LinearAdapterExpert.Load(path, minilm);
        string[] queries = ["the crystalline lens in vertebrates", "blood pressure of children"];
        using var a = served.Encode(queries, EncodeRole.Query);
        using var b = evaluated.Encode(queries, EncodeRole.Query);
        Assert.True(allclose(a, b, atol: 1e-5));
        using var plain = minilm.Encode(queries, EncodeRole.Query);
        Assert.False(allclose(a, plain, atol: 1e-3)); // the map does change the queries
        using var docs = served.Encode(["lens proteins of the eye"], EncodeRole.Document);
        using var baseDocs = minilm.Encode(["lens proteins of the eye"], EncodeRole.Document);
        Assert.True(allclose(docs, baseDocs, atol: 1e-6)); // documents are the base's

        // A name that is neither a plugin nor a saved adapter, and a bad file, fail with the file named.
        Assert.Contains("adapter-none", Assert.Throws<CheckpointException>(() =>
            RetrieverExperts.Create(RetrieverPlugins.Catalog, "adapter-none", CPU, settings, TinyModel.Services, temp.Path)).Message, StringComparison.Ordinal);
        File.WriteAllBytes(LinearAdapterExpert.FileFor(temp.Path, "adapter-bad"), new byte[64]);
        Assert.Contains("adapter-bad", Assert.Throws<CheckpointException>(() =>
            RetrieverExperts.Create(RetrieverPlugins.Catalog, "adapter-bad", CPU, settings, TinyModel.Services, temp.Path)).Message, StringComparison.Ordinal);
    }
}
