using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using MoeGrains.Contracts;
using MoeGrains.Devices;
using MoeGrains.Models;
using MoeGrains.Placement;
using MoeGrains.Plugins;
using Orleans.Runtime.MembershipService.SiloMetadata;

namespace MoeGrains.Hosting;

/// <summary>Silo set-up: <c>siloBuilder.UseLocalhostClustering().AddMoeGrains(o =&gt; ...).AddExpertPlugins("plugins")</c>.</summary>
public static class MoeGrainsSiloBuilderExtensions
{
    /// <summary>
    /// Adds the MoeGrains runtime: expert, router and layer grains, expert placement, the model catalog and this silo's
    /// device (advertised in silo metadata). Options come from the <c>MoeGrains</c> section, then <paramref name="configure"/>.
    /// </summary>
    public static ISiloBuilder AddMoeGrains(this ISiloBuilder builder, Action<MoeGrainsOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var section = builder.Configuration.GetSection(MoeGrainsOptions.SectionName);
        var options = builder.Services.AddOptions<MoeGrainsOptions>().Bind(section);
        if (configure is not null)
        {
            options.Configure(configure);
        }
        options.ValidateOnStart();
        builder.Services.AddOptions<TensorWireOptions>().Bind(section.GetSection("Wire"));
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<MoeGrainsOptions>, MoeGrainsOptionsValidator>());
        builder.Services.TryAddSingleton<ModelCatalog>();
        builder.Services.TryAddSingleton<SiloReadiness>();
        builder.Services.TryAddSingleton<Dispatch.LayerRequestCoalescer>();
        builder.Services.TryAddSingleton(TimeProvider.System);
        builder.Services.TryAddSingleton<Reliability.ExpertCircuitBreakers>();
        builder.Services.TryAddSingleton<Offload.SiloExpertCache>();
        builder.Services.TryAddSingleton<Offload.SiloRoutePredictors>();
        builder.Services.TryAddSingleton<Generation.SiloBackbones>();
        builder.Services.TryAddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<MoeGrainsOptions>>().Value;
            return SiloDevice.FromOptions(o);
        });
        builder.Services.TryAddSingleton(sp =>
        {
            var o = sp.GetRequiredService<IOptions<MoeGrainsOptions>>().Value;
            var logger = sp.GetRequiredService<ILoggerFactory>().CreateLogger("MoeGrains.Plugins");
            var catalog = PluginCatalog.Load(o.PluginFolder, logger, o.TrustedPluginSha256);
            foreach (var assembly in sp.GetServices<BuiltInPluginAssembly>())
            {
                catalog.AddAssembly(assembly.Assembly);
            }
            foreach (var error in catalog.Errors)
            {
                logger.LogError("Plugin not loaded: {Error}", error);
            }
            return catalog;
        });
        builder.AddPlacementDirector<ExpertPlacementStrategy, ExpertPlacementDirector>();
        // The strongly consistent grain directory: when a silo dies, the survivors' activations are re-registered from the
        // silos themselves, so a session grain that survived keeps its one activation (with the default, eventually
        // consistent directory the entries kept by the dead silo are lost and a call can start a second, empty one).
#pragma warning disable ORLEANSEXP003 // experimental in Orleans 10
        builder.AddDistributedGrainDirectory();
#pragma warning restore ORLEANSEXP003
        Retrieval.Serving.RetrievalSiloBuilderExtensions.AddMoeGrainsRetrieval(builder);
        AddGenerationStreams(builder);
        builder.AddPlacementDirector<SiloTargetPlacementStrategy, SiloTargetPlacementDirector>();
        builder.AddExpertPlacementPlans(); // the plan store live plan changes go to (empty: default placement)
        builder.Services.TryAddSingleton<Generation.ExpertLocations>();
        builder.Services.TryAddSingleton<Generation.CoherentReplicaFactory>();

        // Advertise the device now: silo metadata is fixed when the silo starts.
        var eager = new MoeGrainsOptions();
        section.Bind(eager);
        configure?.Invoke(eager);
        builder.UseSiloMetadata(SiloDevice.FromOptions(eager).Metadata());
        if (eager.NativeHeapArenas > 0)
        {
            Diagnostics.NativeHeap.LimitArenas(eager.NativeHeapArenas); // before the silo's threads allocate tensors
        }
        return builder;
    }

    /// <summary>
    /// Memory streams for generated tokens (<see cref="Generation.GenerationStreams"/>): few queues polled often, so a
    /// token reaches its consumer within tens of milliseconds while an idle silo polls a few times per 100 ms.
    /// </summary>
    private static void AddGenerationStreams(ISiloBuilder builder)
    {
        builder.AddMemoryStreams(Generation.GenerationStreams.ProviderName, streams =>
        {
            streams.ConfigurePartitioning(Generation.GenerationStreams.QUEUES);
            streams.ConfigurePullingAgent(agent => agent.Configure(o => o.GetQueueMsgsTimerPeriod = Generation.GenerationStreams.PollPeriod));
        });
        if (!builder.Services.Any(d => d.IsKeyedService && Equals(d.ServiceKey, Generation.GenerationStreams.PubSubStore)))
        {
            builder.AddMemoryGrainStorage(Generation.GenerationStreams.PubSubStore);
        }
    }

    /// <summary>Sets the folder plugins are loaded from.</summary>
    public static ISiloBuilder AddExpertPlugins(this ISiloBuilder builder, string folder)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        builder.Services.Configure<MoeGrainsOptions>(o => o.PluginFolder = Path.GetFullPath(folder));
        return builder;
    }

    /// <summary>Adds the plugin types of an assembly the host already references (in the default load context).</summary>
    public static ISiloBuilder AddExpertPluginAssembly(this ISiloBuilder builder, System.Reflection.Assembly assembly)
    {
        builder.Services.AddSingleton(new BuiltInPluginAssembly(assembly));
        return builder;
    }
}

internal sealed record BuiltInPluginAssembly(System.Reflection.Assembly Assembly);

internal sealed class MoeGrainsOptionsValidator : IValidateOptions<MoeGrainsOptions>
{
    public ValidateOptionsResult Validate(string? name, MoeGrainsOptions o)
    {
        var errors = new List<string>();
        if (o.ExpertTimeoutMs is < 1 or > 600_000) errors.Add($"MoeGrains:ExpertTimeoutMs must be 1..600000, got {o.ExpertTimeoutMs}.");
        if (o.KMin is < 1 or > 64) errors.Add($"MoeGrains:KMin must be 1..64, got {o.KMin}.");
        if (o.MaxTokensPerRequest < 1) errors.Add($"MoeGrains:MaxTokensPerRequest must be positive, got {o.MaxTokensPerRequest}.");
        if (o.MaxQueuedPerExpert < 1) errors.Add($"MoeGrains:MaxQueuedPerExpert must be positive, got {o.MaxQueuedPerExpert}.");
        if (o.MaxQueuedPerSilo < 1) errors.Add($"MoeGrains:MaxQueuedPerSilo must be positive, got {o.MaxQueuedPerSilo}.");
        if (o.BreakerFailureThreshold < 1) errors.Add($"MoeGrains:BreakerFailureThreshold must be positive, got {o.BreakerFailureThreshold}.");
        if (o.BreakerCooldownMs < 0) errors.Add($"MoeGrains:BreakerCooldownMs must not be negative, got {o.BreakerCooldownMs}.");
        foreach (var hash in o.TrustedPluginSha256)
            if (!System.Text.RegularExpressions.Regex.IsMatch(hash, "^[0-9a-fA-F]{64}$")) errors.Add($"MoeGrains:TrustedPluginSha256 entry '{hash}' is not a SHA-256 in hex.");
        if (o.NativeHeapArenas is < 0 or > 1024) errors.Add($"MoeGrains:NativeHeapArenas must be 0..1024, got {o.NativeHeapArenas}.");
        if (o.DeviceMemoryBudgetBytes < 0) errors.Add("MoeGrains:DeviceMemoryBudgetBytes must not be negative.");
        errors.AddRange(o.Offload.Errors());
        foreach (var (model, routes) in o.Offload.Predictors)
        {
            if (!o.Models.TryGetValue(model, out var checkpoint))
            {
                errors.Add($"MoeGrains:Offload:Predictors:{model}: model '{model}' is not served (MoeGrains:Models).");
            }
            else if (File.Exists(routes) && File.Exists(ModelCatalog.CheckpointFile(checkpoint)))
            {
                // The routes must fit the model: parsed now, so a bad file stops the silo instead of silently disabling prefetch.
                try
                {
                    var spec = ModelSpec.FromCheckpoint(model, Checkpoints.SafeTensorsFile.Open(ModelCatalog.CheckpointFile(checkpoint)));
                    Offload.SiloRoutePredictors.Load(model, routes, spec);
                }
                catch (ArgumentException e)
                {
                    errors.Add(e.Message);
                }
                catch (Exception e) when (e is MoeGrainsException or IOException or InvalidDataException)
                {
                    errors.Add($"MoeGrains:Offload:Predictors:{model}: the checkpoint of model '{model}' cannot be read to check the routes: {e.Message}");
                }
            }
        }
        var device = o.Device.Trim().ToLowerInvariant();
        if (device is not ("auto" or "cpu") && !System.Text.RegularExpressions.Regex.IsMatch(device, "^cuda(:[0-9]+)?$"))
            errors.Add($"MoeGrains:Device must be auto, cpu or cuda:N, got '{o.Device}'.");
        foreach (var (model, path) in o.Models)
        {
            if (string.IsNullOrWhiteSpace(model) || model.Contains('/')) errors.Add($"Model name '{model}' must be non-empty and contain no '/'.");
            if (!File.Exists(ModelCatalog.CheckpointFile(path))) errors.Add($"Checkpoint of model '{model}' not found: {path}.");
        }
        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }
}
