using MoeGrains.Plugins.Mixtral.Tokenizers;

namespace MoeGrains.Tests.Model;

public sealed class TokenizerTests
{
    private const string Verse = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n";

    [Fact]
    public void Character_tokens_round_trip_and_survive_the_checkpoint_metadata()
    {
        var tokenizer = CharTokenizer.FromText(Verse);
        var ids = tokenizer.Encode(Verse);
        Assert.Equal(Verse.Length, ids.Length);
        Assert.Equal(Verse, tokenizer.Decode(ids));
        Assert.Equal(Verse.Distinct().Count(), tokenizer.VocabSize);

        var rebuilt = TextTokenizers.FromMetadata(tokenizer.ToMetadata());
        Assert.Equal(ids, rebuilt.Encode(Verse));
        Assert.Equal(tokenizer.VocabSize, rebuilt.VocabSize);
    }

    [Fact]
    public void A_character_outside_the_vocabulary_is_refused_by_name()
    {
        var tokenizer = CharTokenizer.FromText("abc");
        var error = Assert.Throws<ArgumentException>(() => tokenizer.Encode("abz"));
        Assert.Contains("'z'", error.Message);
        Assert.Contains("position 2", error.Message);
    }

    [Fact]
    public void Gpt2_bpe_round_trips_any_text()
    {
        var tokenizer = TextTokenizers.ForTraining("gpt2", "");
        Assert.Equal(50257, tokenizer.VocabSize);
        foreach (var text in new[] { Verse, "naïve café — 東京 🙂 x=1+2", "   leading spaces and\ttabs\n\n" })
        {
            var ids = tokenizer.Encode(text);
            Assert.True(ids.Length < text.Length * 2);
            Assert.All(ids, id => Assert.InRange(id, 0, 50256));
            Assert.Equal(text, tokenizer.Decode(ids));
        }
        Assert.Equal(tokenizer.Encode("Hello world"), TextTokenizers.FromMetadata(tokenizer.ToMetadata()).Encode("Hello world"));
        Assert.Equal(new[] { 15496, 995 }, tokenizer.Encode("Hello world")); // GPT-2's own ids
    }

    [Fact]
    public void Unknown_tokenizers_are_refused()
    {
        Assert.Throws<ArgumentException>(() => TextTokenizers.ForTraining("wordpiece", "x"));
        Assert.Throws<InvalidDataException>(() => TextTokenizers.FromMetadata(new Dictionary<string, string>()));
        Assert.Throws<InvalidDataException>(() => TextTokenizers.FromMetadata(new Dictionary<string, string> { [ITextTokenizer.MetadataKey] = "char" }));
    }
}
