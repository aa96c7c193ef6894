using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace MoeGrains.Plugins.Mixtral.Tokenizers;

/// <summary>
/// One token per word, per punctuation mark and per line break, the vocabulary being the sorted distinct tokens of the
/// training text (about 40 for a bAbI task: short stories in a small vocabulary fit a short context). Other white space
/// separates tokens and is not kept: decoding puts one space between words and none before punctuation. Text with a
/// token outside the vocabulary is refused, naming the token.
/// </summary>
public sealed partial class WordTokenizer : ITextTokenizer
{
    public const string TokenizerName = "word";
    public const string VocabularyKey = "moegrains.tokenizer.words";

    private readonly string[] _words;
    private readonly Dictionary<string, int> _ids;

    public WordTokenizer(IEnumerable<string> vocabulary)
    {
        _words = vocabulary.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        if (_words.Length == 0)
        {
            throw new ArgumentException("A word vocabulary needs at least one word.");
        }
        _ids = _words.Select((w, i) => (w, i)).ToDictionary(p => p.w, p => p.i, StringComparer.Ordinal);
    }

    /// <summary>The tokenizer whose vocabulary is every token of <paramref name="text"/>.</summary>
    public static WordTokenizer FromText(string text) => new(Split(text));

    public string Name => TokenizerName;

    public int VocabSize => _words.Length;

    public IReadOnlyList<string> Vocabulary => _words;

    [GeneratedRegex(@"\n|[A-Za-z0-9']+|[^\sA-Za-z0-9']")]
    private static partial Regex TokenPattern();

    /// <summary>The tokens of <paramref name="text"/> as strings.</summary>
    public static IEnumerable<string> Split(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return TokenPattern().Matches(text).Select(m => m.Value);
    }

    public int[] Encode(string text) => [.. Split(text).Select(w => _ids.TryGetValue(w, out var id)
        ? id
        : throw new ArgumentException($"The word '{(w == "\n" ? "\\n" : w)}' is not in the model's {_words.Length}-word vocabulary."))];

    public int Id(string word) => _ids.TryGetValue(word, out var id) ? id : throw new ArgumentException($"The word '{word}' is not in the vocabulary.");

    public string Decode(IEnumerable<int> ids)
    {
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            var w = (uint)id < (uint)_words.Length ? _words[id] : throw new ArgumentOutOfRangeException(nameof(ids), $"Token id {id} is outside the vocabulary of {_words.Length}.");
            var word = char.IsLetterOrDigit(w[0]) || w[0] == '\'';
            if (word && sb.Length > 0 && sb[^1] != '\n') sb.Append(' ');
            sb.Append(w);
        }
        return sb.ToString();
    }

    public IReadOnlyDictionary<string, string> ToMetadata() => new Dictionary<string, string>
    {
        [ITextTokenizer.MetadataKey] = TokenizerName,
        [VocabularyKey] = JsonSerializer.Serialize(_words),
    };
}
