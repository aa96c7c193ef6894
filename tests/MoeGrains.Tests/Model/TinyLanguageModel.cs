using MoeGrains.Generation;
using MoeGrains.Plugins.Mixtral;
using MoeGrains.Plugins.Mixtral.Tokenizers;

namespace MoeGrains.Tests.Model;

/// <summary>Tiny Mixtral-style models and corpora for fast tests.</summary>
internal static class TinyLanguageModel
{
    public const string Text = "the quick brown fox jumps over the lazy dog. a stitch in time saves nine; fortune favours the bold! ";

    public static string Corpus(int repeats = 60) => string.Concat(Enumerable.Repeat(Text, repeats));

    public static MixtralConfig Config(int vocab, int layers = 2, int experts = 4, int context = 32) => new()
    {
        VocabSize = vocab, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = layers, NumAttentionHeads = 4, NumKeyValueHeads = 2,
        NumLocalExperts = experts, NumExpertsPerTok = 2, MaxPositionEmbeddings = context,
    };

    /// <summary>Writes a freshly initialised checkpoint (weights, config.json, metadata) and returns its weights file.</summary>
    public static string Write(string folder, long seed = 5, int layers = 2, int experts = 4)
    {
        var tokenizer = CharTokenizer.FromText(Corpus(1));
        var config = Config(tokenizer.VocabSize, layers, experts);
        using var model = new MixtralForCausalLM(config, seed);
        LanguageModelCheckpoint.Save(folder, model.StateDict(), config.ToJson(), MixtralCheckpointMetadata.Create(config, tokenizer));
        return LanguageModelCheckpoint.WeightsPath(folder);
    }
}
