
namespace MoeGrains.Hosting;

/// <summary>Options of a MoeGrains silo, bound from the configuration section <c>MoeGrains</c>.</summary>
public sealed class MoeGrainsOptions
{
    public const string SectionName = "MoeGrains";
    public const int DEFAULT_EXPERT_TIMEOUT_MS = 10_000;

    /// <summary>Folder the plugins are loaded from (default <c>plugins</c> beside the executable).</summary>
    public string PluginFolder { get; set; } = Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>The models served: name → safetensors checkpoint path.</summary>
    public Dictionary<string, string> Models { get; set; } = new(StringComparer.Ordinal);

    /// <summary>This silo's device: <c>auto</c> (default: CUDA when available), <c>cpu</c> or <c>cuda:N</c>.</summary>
    public string Device { get; set; } = "auto";

    /// <summary>Device memory the silo offers to experts, in bytes (0: half the memory available to the process).</summary>
    public long DeviceMemoryBudgetBytes { get; set; }

    /// <summary>How long an expert call may take before it is masked (default 10 s).</summary>
    public int ExpertTimeoutMs { get; set; } = DEFAULT_EXPERT_TIMEOUT_MS;

    /// <summary>Least number of each token's chosen experts that must answer (default 1).</summary>
    public int KMin { get; set; } = 1;

    /// <summary>Requests one expert may hold (running and waiting) before refusing more at once (default 64).</summary>
    public int MaxQueuedPerExpert { get; set; } = 64;

    /// <summary>
    /// Continuous batching, in two places: layer requests that arrive while a pass of the same layer is in flight on the
    /// silo are served together by the next pass (one routing call and one message per expert for all of them), and
    /// calls to one expert that queue behind its previous computation share one forward pass; at most this many tokens
    /// each (default 4096; 0 turns both off). Each caller still gets its own rows and its own errors.
    /// </summary>
    public int MaxBatchTokens { get; set; } = 4096;

    /// <summary>
    /// How many C-heap arenas (glibc's M_ARENA_MAX) the silo's process may use for native tensor memory (default 2; 0
    /// leaves glibc's default of 8 per core). Tensor work runs on one device thread per device, so few arenas cost no
    /// contention, while many hold on to freed blocks: under load the working set grew 16% in 30 s with the default and
    /// 5.5% with 2 (`moe bench load`). Linux with glibc only; elsewhere it does nothing.
    /// </summary>
    public int NativeHeapArenas { get; set; } = 2;

    /// <summary>Computations a silo's device may have queued before refusing more at once (default 1024).</summary>
    public int MaxQueuedPerSilo { get; set; } = 1024;

    /// <summary>
    /// A computation running longer than this on the device thread is left to finish on its own thread while a fresh
    /// thread serves the queue, so a hung expert does not stall the others (default 2 s). Silos sharing a process share
    /// the device thread, and the smallest setting applies.
    /// </summary>
    public int DeviceHungAfterMs { get; set; } = 2000;

    /// <summary>Consecutive failures after which an expert's circuit breaker opens (default 3).</summary>
    public int BreakerFailureThreshold { get; set; } = 3;

    /// <summary>How long an open breaker skips its expert before one trial call (default 30 s).</summary>
    public int BreakerCooldownMs { get; set; } = 30_000;

    /// <summary>
    /// When not empty, the SHA-256 (hex) of every plugin assembly that may be loaded: any other file in the plugin folder,
    /// dependencies included, is refused before it is loaded. Plugins are code; this pins exactly which code.
    /// </summary>
    public List<string> TrustedPluginSha256 { get; set; } = [];

    /// <summary>Most tokens one layer request may carry (default 65,536).</summary>
    public int MaxTokensPerRequest { get; set; } = 65_536;

    /// <summary>Experts that do not fit: this silo's device budget for expert weights, the cache policy and the weight stores (off by default).</summary>
    public MoeGrains.Offload.ExpertOffloadOptions Offload { get; set; } = new();
}
