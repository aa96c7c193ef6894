using System.Runtime.CompilerServices;

namespace MoeGrains.Generation;

/// <summary>Feeds tokens to a decoder (which keeps its KV cache) and returns the next-token logits of the last one.</summary>
public delegate Task<float[]> DecoderStepAsync(long[] tokens, CancellationToken cancellationToken);

/// <summary>
/// The decoding loop, the same whichever decoder runs (in process or through the cluster): the prompt in one step,
/// then one token per step, each sampled by <see cref="TokenSampler"/> and yielded as soon as it is chosen.
/// </summary>
public static class TextGeneration
{
    public static async IAsyncEnumerable<int> GenerateAsync(DecoderStepAsync step, IReadOnlyList<int> prompt, GenerationOptions options, int contextLength,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(step);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate(prompt.Count, contextLength);
        var sampler = new TokenSampler(options.Temperature, options.TopP, options.Seed);
        var logits = await step([.. prompt.Select(t => (long)t)], cancellationToken).ConfigureAwait(false);
        for (var i = 0; i < options.MaxTokens; i++)
        {
            var next = sampler.Next(logits);
            yield return next;
            if (i + 1 == options.MaxTokens || next == options.StopToken)
            {
                yield break;
            }
            logits = await step([next], cancellationToken).ConfigureAwait(false);
        }
    }
}
