namespace MoeGrains.Contracts;

/// <summary>Base of every error MoeGrains raises on purpose; each subtype names what was wrong.</summary>
[GenerateSerializer, Alias("moegrains.error")]
public class MoeGrainsException : Exception
{
    public MoeGrainsException() { }

    public MoeGrainsException(string message) : base(message) { }

    public MoeGrainsException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A tensor's dtype, shape, byte length, scales or values are not acceptable.</summary>
[GenerateSerializer, Alias("moegrains.tensor-invalid")]
public class TensorValidationException : MoeGrainsException
{
    public TensorValidationException() { }

    public TensorValidationException(string message) : base(message) { }
}

/// <summary>A payload is larger than the configured maximum; refused before it is allocated or sent.</summary>
[GenerateSerializer, Alias("moegrains.payload-too-large")]
public sealed class PayloadTooLargeException : TensorValidationException
{
    public PayloadTooLargeException() { }

    public PayloadTooLargeException(long bytes, long maxBytes)
        : base($"Payload of {bytes} bytes exceeds the configured maximum of {maxBytes} bytes.")
    {
        Bytes = bytes;
        MaxBytes = maxBytes;
    }

    [Id(0)] public long Bytes { get; init; }

    [Id(1)] public long MaxBytes { get; init; }
}

/// <summary>Fewer than <c>k_min</c> of a token's chosen experts answered in time.</summary>
[GenerateSerializer, Alias("moegrains.quorum")]
public sealed class ExpertQuorumException : MoeGrainsException
{
    public ExpertQuorumException() { }

    public ExpertQuorumException(string message, IReadOnlyList<int> failedExperts) : base(message)
    {
        FailedExperts = [.. failedExperts];
    }

    [Id(0)] public int[] FailedExperts { get; init; } = [];
}

/// <summary>A request named a model, layer or expert that does not exist; no grain is activated for it.</summary>
[GenerateSerializer, Alias("moegrains.unknown-expert")]
public sealed class UnknownExpertException : MoeGrainsException
{
    public UnknownExpertException() { }

    public UnknownExpertException(string message) : base(message) { }
}

/// <summary>A checkpoint file is malformed or corrupt (header, offsets, dtypes, shapes, checksums).</summary>
[GenerateSerializer, Alias("moegrains.checkpoint")]
public sealed class CheckpointException : MoeGrainsException
{
    public CheckpointException() { }

    public CheckpointException(string message) : base(message) { }
}

/// <summary>An expert failed to load or to compute (its plugin threw, or its weights are unusable).</summary>
[GenerateSerializer, Alias("moegrains.expert-failed")]
public sealed class ExpertFailedException : MoeGrainsException
{
    public ExpertFailedException() { }

    public ExpertFailedException(string message) : base(message) { }

    public ExpertFailedException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A queue is full: the request was refused at once, nothing of it was run. Retry later or add capacity.</summary>
[GenerateSerializer, Alias("moegrains.overloaded")]
public sealed class OverloadedException : MoeGrainsException
{
    public OverloadedException() { }

    public OverloadedException(string message, int limit) : base(message)
    {
        Limit = limit;
    }

    [Id(0)] public int Limit { get; init; }
}
