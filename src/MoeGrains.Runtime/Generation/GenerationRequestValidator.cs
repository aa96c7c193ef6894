using MoeGrains.Plugins;

namespace MoeGrains.Generation;

/// <summary>
/// The one set of checks every generation request passes where it enters (<c>moe generate</c>, the client API, the HTTP
/// API, the decoder session grain): each failure is a <see cref="GenerationRequestException"/> whose
/// <see cref="GenerationRequestException.Field"/> names the request field in the HTTP API's spelling.
/// </summary>
public static class GenerationRequestValidator
{
    /// <summary>Longest prompt accepted, in characters, before it is even tokenized.</summary>
    public const int MAX_PROMPT_CHARS = 100_000;

    public const string ModelField = "model";
    public const string PromptField = "prompt";
    public const string MaxTokensField = "max_tokens";
    public const string TemperatureField = "temperature";
    public const string TopPField = "top_p";
    public const string RouterField = "router";
    public const string ScmoeField = "scmoe";
    public const string ScmoeAlphaField = "scmoe.alpha";
    public const string ScmoeBetaField = "scmoe.beta";
    public const string ScmoeWeakRankField = "scmoe.weak_rank";

    /// <summary>The model must be one of those served.</summary>
    public static void CheckModel(string? model, IReadOnlyCollection<string> served)
    {
        ArgumentNullException.ThrowIfNull(served);
        if (string.IsNullOrWhiteSpace(model))
        {
            throw new GenerationRequestException(ModelField, $"model is required (served: {Served(served)}).");
        }
        if (!served.Contains(model, StringComparer.Ordinal))
        {
            throw new GenerationRequestException(ModelField, $"Unknown model '{model}' (served: {Served(served)}).");
        }
    }

    /// <summary>A router, when named, must be a router plugin of the catalog (null or empty: the model's own).</summary>
    public static void CheckRouter(string? router, PluginCatalog plugins)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        var routers = plugins.Entries.Where(e => e.Kind == PluginKind.Router).Select(e => e.Name).Order(StringComparer.Ordinal).ToArray();
        CheckRouter(router, routers);
    }

    public static void CheckRouter(string? router, IReadOnlyCollection<string> routers)
    {
        if (string.IsNullOrEmpty(router))
        {
            return;
        }
        if (!routers.Contains(router, StringComparer.OrdinalIgnoreCase))
        {
            throw new GenerationRequestException(RouterField, $"Unknown router '{router}' (known: {string.Join(", ", routers)}).");
        }
    }

    /// <summary>Checks the prompt text and encodes it: not empty, not too long, representable, within the context.</summary>
    public static int[] CheckPrompt(string? prompt, Func<string, int[]> encode, int contextLength)
    {
        ArgumentNullException.ThrowIfNull(encode);
        if (string.IsNullOrEmpty(prompt))
        {
            throw new GenerationRequestException(PromptField, "The prompt is empty: give at least one token of text to continue.");
        }
        if (prompt.Length > MAX_PROMPT_CHARS)
        {
            throw new GenerationRequestException(PromptField, $"The prompt has {prompt.Length} characters; at most {MAX_PROMPT_CHARS} are accepted.");
        }
        int[] ids;
        try
        {
            ids = encode(prompt);
        }
        catch (ArgumentException e)
        {
            throw new GenerationRequestException(PromptField, $"The prompt cannot be encoded with the model's tokenizer: {e.Message}");
        }
        CheckPromptTokens(ids.Length, contextLength);
        return ids;
    }

    /// <summary>At least one token, and no more than the model's context.</summary>
    public static void CheckPromptTokens(int promptTokens, int contextLength)
    {
        if (promptTokens == 0)
        {
            throw new GenerationRequestException(PromptField, "The prompt is empty: give at least one token of text to continue.");
        }
        if (promptTokens > contextLength)
        {
            throw new GenerationRequestException(PromptField, $"The prompt has {promptTokens} tokens; the model's context holds {contextLength}.");
        }
    }

    /// <summary>max tokens in 1..<see cref="GenerationOptions.MAX_NEW_TOKENS"/>, temperature in 0..100 (0 greedy), top-p in (0, 1],
    /// SCMoE's alpha in (0, 1], beta finite and not negative, weak rank not negative.</summary>
    public static void CheckOptions(GenerationOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxTokens < 1 || options.MaxTokens > GenerationOptions.MAX_NEW_TOKENS)
        {
            throw new GenerationRequestException(MaxTokensField, $"max tokens must be between 1 and {GenerationOptions.MAX_NEW_TOKENS}, got {options.MaxTokens}.");
        }
        if (!double.IsFinite(options.Temperature) || options.Temperature < 0 || options.Temperature > GenerationOptions.MAX_TEMPERATURE)
        {
            throw new GenerationRequestException(TemperatureField, $"temperature must be between 0 (greedy) and {GenerationOptions.MAX_TEMPERATURE}, got {options.Temperature}.");
        }
        if (!double.IsFinite(options.TopP) || options.TopP <= 0 || options.TopP > 1)
        {
            throw new GenerationRequestException(TopPField, $"top-p must be greater than 0 and at most 1, got {options.TopP}.");
        }
        options.SelfContrast?.Validate();
    }

    private static string Served(IReadOnlyCollection<string> served) => served.Count == 0 ? "none" : string.Join(", ", served.Order(StringComparer.Ordinal));
}
