using System.Text.Json;

namespace MoeGrains.Plugins.Mixtral.Tokenizers;

/// <summary>Creates tokenizers by name and rebuilds a checkpoint's tokenizer from its metadata.</summary>
public static class TextTokenizers
{
    public static readonly string[] Names = [CharTokenizer.TokenizerName, Gpt2Tokenizer.TokenizerName, WordTokenizer.TokenizerName];

    /// <summary>A tokenizer for training on <paramref name="text"/>: <c>char</c> (vocabulary from the text) or <c>gpt2</c>.</summary>
    public static ITextTokenizer ForTraining(string name, string text) => name.Trim().ToLowerInvariant() switch
    {
        CharTokenizer.TokenizerName => CharTokenizer.FromText(text),
        WordTokenizer.TokenizerName => WordTokenizer.FromText(text),
        Gpt2Tokenizer.TokenizerName or "bpe" => new Gpt2Tokenizer(),
        _ => throw new ArgumentException($"Unknown tokenizer '{name}' (known: {string.Join(", ", Names)})."),
    };

    public static ITextTokenizer FromMetadata(IReadOnlyDictionary<string, string> metadata)
    {
        if (!metadata.TryGetValue(ITextTokenizer.MetadataKey, out var name))
        {
            throw new InvalidDataException($"The checkpoint names no tokenizer (metadata '{ITextTokenizer.MetadataKey}').");
        }
        return name switch
        {
            CharTokenizer.TokenizerName => new CharTokenizer(
                metadata.TryGetValue(CharTokenizer.VocabularyKey, out var json) && JsonSerializer.Deserialize<string>(json) is { Length: > 0 } chars
                    ? chars
                    : throw new InvalidDataException($"The checkpoint's character tokenizer has no vocabulary (metadata '{CharTokenizer.VocabularyKey}').")),
            Gpt2Tokenizer.TokenizerName => new Gpt2Tokenizer(),
            WordTokenizer.TokenizerName => new WordTokenizer(
                metadata.TryGetValue(WordTokenizer.VocabularyKey, out var words) && JsonSerializer.Deserialize<string[]>(words) is { Length: > 0 } list
                    ? list
                    : throw new InvalidDataException($"The checkpoint's word tokenizer has no vocabulary (metadata '{WordTokenizer.VocabularyKey}').")),
            _ => throw new InvalidDataException($"The checkpoint names an unknown tokenizer '{name}' (known: {string.Join(", ", Names)})."),
        };
    }

    /// <summary>The token that ends a text, where the tokenizer has one (GPT-2's <c>&lt;|endoftext|&gt;</c>, 50256), or null.</summary>
    public static int? StopToken(ITextTokenizer tokenizer) => tokenizer is Gpt2Tokenizer ? 50256 : null;
}
