namespace MoeGrains.Plugins.Mixtral.Tokenizers;

/// <summary>Turns text into token ids and back; describes itself as checkpoint metadata so a checkpoint carries its tokenizer.</summary>
public interface ITextTokenizer
{
    /// <summary>The metadata key naming the tokenizer (<c>char</c> or <c>gpt2</c>).</summary>
    public const string MetadataKey = "moegrains.tokenizer";

    string Name { get; }

    int VocabSize { get; }

    /// <summary>The ids of <paramref name="text"/>; throws <see cref="ArgumentException"/> for text it cannot represent.</summary>
    int[] Encode(string text);

    string Decode(IEnumerable<int> ids);

    /// <summary>What a checkpoint stores to rebuild this tokenizer (<see cref="TextTokenizers.FromMetadata"/>).</summary>
    IReadOnlyDictionary<string, string> ToMetadata();
}
