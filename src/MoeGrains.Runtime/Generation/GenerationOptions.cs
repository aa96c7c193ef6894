using MoeGrains.Contracts;

namespace MoeGrains.Generation;

/// <summary>
/// How to continue a prompt: at most <see cref="MaxTokens"/> new tokens, sampled at <see cref="Temperature"/> from the
/// smallest set of tokens whose probability reaches <see cref="TopP"/>, from <see cref="Seed"/>. Temperature 0 is greedy.
/// </summary>
public sealed record GenerationOptions
{
    public const int MAX_NEW_TOKENS = 4096;
    public const double MAX_TEMPERATURE = 100;

    public int MaxTokens { get; init; } = 200;

    public double Temperature { get; init; } = 0.8;

    public double TopP { get; init; } = 0.95;

    public long Seed { get; init; } = 1;

    /// <summary>Stop after this token (for instance GPT-2's end of text), or null.</summary>
    public int? StopToken { get; init; }

    public bool Greedy => Temperature == 0;

    /// <summary>Throws <see cref="GenerationRequestException"/> naming the first bad value of a request.</summary>
    public void Validate(int promptTokens, int contextLength)
    {
        if (promptTokens == 0)
        {
            throw new GenerationRequestException("The prompt is empty: give at least one token of text to continue.");
        }
        if (promptTokens > contextLength)
        {
            throw new GenerationRequestException($"The prompt has {promptTokens} tokens; the model's context holds {contextLength}.");
        }
        if (MaxTokens < 1 || MaxTokens > MAX_NEW_TOKENS)
        {
            throw new GenerationRequestException($"max tokens must be between 1 and {MAX_NEW_TOKENS}, got {MaxTokens}.");
        }
        if (!double.IsFinite(Temperature) || Temperature < 0 || Temperature > MAX_TEMPERATURE)
        {
            throw new GenerationRequestException($"temperature must be between 0 (greedy) and {MAX_TEMPERATURE}, got {Temperature}.");
        }
        if (!double.IsFinite(TopP) || TopP <= 0 || TopP > 1)
        {
            throw new GenerationRequestException($"top-p must be greater than 0 and at most 1, got {TopP}.");
        }
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
}
