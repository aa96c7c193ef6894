using System.Text.Json;

namespace MoeGrains.Plugins.Mixtral.Tokenizers;

/// <summary>
/// One token per character (per UTF-16 code unit), the vocabulary being the sorted distinct characters of the training
/// text: 65 for tinyshakespeare. Text with a character outside the vocabulary is refused, naming the character.
/// </summary>
public sealed class CharTokenizer : ITextTokenizer
{
    public const string TokenizerName = "char";
    public const string VocabularyKey = "moegrains.tokenizer.vocabulary";

    private readonly char[] _chars;
    private readonly Dictionary<char, int> _ids;

    public CharTokenizer(IEnumerable<char> vocabulary)
    {
        _chars = vocabulary.Distinct().Order().ToArray();
        if (_chars.Length == 0)
        {
            throw new ArgumentException("A character vocabulary needs at least one character.");
        }
        _ids = _chars.Select((c, i) => (c, i)).ToDictionary(p => p.c, p => p.i);
    }

    /// <summary>The tokenizer whose vocabulary is every character of <paramref name="text"/>.</summary>
    public static CharTokenizer FromText(string text) => new(text);

    public string Name => TokenizerName;

    public int VocabSize => _chars.Length;

    public IReadOnlyList<char> Vocabulary => _chars;

    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new int[text.Length];
        for (var i = 0; i < text.Length; i++)
        {
            if (!_ids.TryGetValue(text[i], out ids[i]))
            {
                throw new ArgumentException($"The character {Describe(text[i])} at position {i} is not in the model's {_chars.Length}-character vocabulary.");
            }
        }
        return ids;
    }

    public string Decode(IEnumerable<int> ids) =>
        new(ids.Select(id => (uint)id < (uint)_chars.Length ? _chars[id] : throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary of {_chars.Length}.")).ToArray());

    public IReadOnlyDictionary<string, string> ToMetadata() => new Dictionary<string, string>
    {
        [ITextTokenizer.MetadataKey] = TokenizerName,
        [VocabularyKey] = JsonSerializer.Serialize(new string(_chars)),
    };

    private static string Describe(char c) => char.IsControl(c) || char.IsWhiteSpace(c) ? $"U+{(int)c:X4}" : $"'{c}' (U+{(int)c:X4})";
}
