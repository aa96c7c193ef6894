using TorchSharp;

namespace MoeGrains;

/// <summary>
/// A backbone stage whose weights can serve many sessions at once because what each session accumulates (an attention
/// stage's KV cache) lives in a state object the session owns. One instance per model and device is then enough for
/// all of a silo's sessions, and the framework may dispose the instance and make it again from its weights (to stream
/// weights that do not stay on the device) without losing any session's state.
/// </summary>
public interface ISharedStage : IExpert
{
    /// <summary>A new, empty state for one session (the caller disposes it when the session ends).</summary>
    IDisposable CreateState();

    /// <summary>
    /// Runs the stage for the session whose state is <paramref name="state"/> (one made by <see cref="CreateState"/> of
    /// this or an earlier instance of the same stage), updating that state. The caller owns the input and the result.
    /// </summary>
    torch.Tensor Forward(torch.Tensor hiddenStates, IDisposable state);
}
