using System.Globalization;
using System.Text;
using TorchSharp;

namespace MoeGrains.Plugins.Retrieval;

/// <summary>
/// Okapi BM25 over lower-cased alphanumeric tokens (no stemming, no stop words): <c>k1</c> 1.2 and <c>b</c> 0.75 by
/// default (settings <c>k1</c>, <c>b</c>). The idf is Robertson-Spärck Jones', <c>ln((N - df + 0.5) / (df + 0.5))</c>;
/// terms in more than half of the documents, where it turns negative, get <c>ε · mean idf</c> (ε = 0.25) instead, as in
/// the common reference implementation (rank_bm25). Each occurrence of a term in the query counts.
/// </summary>
[Expert("bm25", Description = "Okapi BM25 lexical retrieval (k1 1.2, b 0.75, alphanumeric tokens, no stemming)")]
public sealed class Bm25Expert : IRetrieverExpert
{
    public const double DEFAULT_K1 = 1.2;
    public const double DEFAULT_B = 0.75;
    public const double DEFAULT_EPSILON = 0.25;

    private readonly double _k1;
    private readonly double _b;

    public Bm25Expert(PluginContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        _k1 = context.GetDouble("k1", DEFAULT_K1);
        _b = context.GetDouble("b", DEFAULT_B);
        if (_k1 < 0 || _b is < 0 or > 1)
        {
            throw new ArgumentOutOfRangeException(nameof(context), $"BM25 '{context.Id}': k1 must be >= 0 and b in [0, 1], got k1 {_k1}, b {_b}.");
        }
        Descriptor = new ExpertDescriptor("bm25", ExpertKind.Retriever, 0, 0, 0, "float32") { Description = "Okapi BM25" };
    }

    public ExpertDescriptor Descriptor { get; }

    public torch.Tensor Encode(IReadOnlyList<string> texts, EncodeRole role) =>
        throw new NotSupportedException("BM25 is a lexical expert without an embedding space: search it through Index(documents).");

    public IRetrieverIndex Index(IReadOnlyList<string> documents) => new Bm25Index(documents, _k1, _b, DEFAULT_EPSILON);

    public void Dispose()
    {
    }

    /// <summary>Lower-cased runs of letters and digits.</summary>
    public static List<string> Tokenize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tokens = new List<string>();
        var current = new StringBuilder();
        foreach (var c in text)
        {
            if (char.IsLetterOrDigit(c))
            {
                current.Append(char.ToLower(c, CultureInfo.InvariantCulture));
            }
            else if (current.Length > 0)
            {
                tokens.Add(current.ToString());
                current.Clear();
            }
        }
        if (current.Length > 0)
        {
            tokens.Add(current.ToString());
        }
        return tokens;
    }
}
