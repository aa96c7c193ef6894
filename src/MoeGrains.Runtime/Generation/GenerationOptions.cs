using MoeGrains.Contracts;

namespace MoeGrains.Generation;

/// <summary>
/// How to continue a prompt: at most <see cref="MaxTokens"/> new tokens, sampled at <see cref="Temperature"/> from the
/// smallest set of tokens whose probability reaches <see cref="TopP"/>, from <see cref="Seed"/>. Temperature 0 is greedy.
/// Checked by <see cref="GenerationRequestValidator"/> wherever a request enters (CLI, client API, HTTP, session grain).
/// </summary>
[GenerateSerializer, Immutable, Alias("moegrains.GenerationOptions")]
public sealed record GenerationOptions
{
    public const int MAX_NEW_TOKENS = 4096;
    public const double MAX_TEMPERATURE = 100;

    [Id(0)] public int MaxTokens { get; init; } = 200;

    [Id(1)] public double Temperature { get; init; } = 0.8;

    [Id(2)] public double TopP { get; init; } = 0.95;

    [Id(3)] public long Seed { get; init; } = 1;

    /// <summary>Stop after this token (for instance GPT-2's end of text), or null.</summary>
    [Id(4)] public int? StopToken { get; init; }

    /// <summary>Self-contrast decoding (SCMoE): the tokens are chosen from the contrast of the strong routing and rank-k routing; null: plain decoding.</summary>
    [Id(5)] public SelfContrastDecoding? SelfContrast { get; init; }

    public bool Greedy => Temperature == 0;

    /// <summary>Throws <see cref="GenerationRequestException"/> naming the first bad value of a request.</summary>
    public void Validate(int promptTokens, int contextLength)
    {
        GenerationRequestValidator.CheckPromptTokens(promptTokens, contextLength);
        GenerationRequestValidator.CheckOptions(this);
    }
}

/// <summary>A generation request that cannot be served as asked: the message says which value and why.</summary>
[GenerateSerializer, Alias("moegrains.GenerationRequestException")]
public sealed class GenerationRequestException : MoeGrainsException
{
    public GenerationRequestException()
    {
    }

    public GenerationRequestException(string message) : base(message)
    {
    }

    public GenerationRequestException(string field, string message) : base(message)
    {
        Field = field;
    }

    /// <summary>The request field that was wrong, in the HTTP API's names (<c>prompt</c>, <c>max_tokens</c>, ...), when one is.</summary>
    [Id(0)] public string? Field { get; init; }
}

/// <summary>
/// A generation session's state is gone: the silo that held its grain (with its KV cache and the record of the tokens
/// it made) was lost, and the grain that answers now is a fresh activation. Start a new session.
/// </summary>
[GenerateSerializer, Alias("moegrains.SessionLostException")]
public sealed class SessionLostException : MoeGrainsException
{
    public SessionLostException()
    {
    }

    public SessionLostException(string message) : base(message)
    {
    }
}
