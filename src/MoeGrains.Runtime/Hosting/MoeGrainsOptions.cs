
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

    /// <summary>Most tokens one layer request may carry (default 65,536).</summary>
    public int MaxTokensPerRequest { get; set; } = 65_536;
}
