using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using MoeGrains.Placement;

namespace MoeGrains.Placement
{
    /// <summary>
    /// The placement plans that <see cref="ExpertPlacementDirector"/> follows. Silo indices count the silos the director
    /// chooses among, in its order (GPU silos when there are any, sorted by address).
    /// </summary>
    public interface IExpertPlacementPlans
    {
        /// <summary>The silo index of an expert under the current plan, or null to place it the default way.</summary>
        int? SiloIndex(string model, int layer, int expert, int silos);

        /// <summary>The silo index of replica <paramref name="replica"/> (&gt; 0) of an expert, or null to place it the default way.</summary>
        int? ReplicaSiloIndex(string model, int layer, int expert, int replica, int silos) => null;
    }

    /// <summary>
    /// Plans per model, replaceable at any time. A plan is followed only while the cluster has as many silos as it was
    /// made for, and only for the layers it covers; other experts are placed round-robin. A new plan affects activations
    /// made after it; moving experts that are already active is not done here.
    /// </summary>
    public sealed class ExpertPlacementPlans : IExpertPlacementPlans
    {
        private readonly Lock _lock = new();
        private Dictionary<string, PlacementPlan> _plans = new(StringComparer.Ordinal);

        /// <summary>Counts plan changes, so a caller can tell that the plans it read are stale.</summary>
        public long Version { get; private set; }

        public void Apply(string model, PlacementPlan plan)
        {
            ArgumentException.ThrowIfNullOrWhiteSpace(model);
            ArgumentNullException.ThrowIfNull(plan);
            lock (_lock)
            {
                _plans = new Dictionary<string, PlacementPlan>(_plans, StringComparer.Ordinal) { [model] = plan };
                Version++;
            }
        }

        /// <summary>Reads a plan CSV (<c>layer,expert,silo</c>, as <c>moe place --out</c> writes) and applies it.</summary>
        public void ApplyFile(string model, string path)
        {
            using var reader = new StreamReader(path);
            Apply(model, PlacementPlan.ReadCsv(reader, path));
        }

        public bool Remove(string model)
        {
            lock (_lock)
            {
                var next = new Dictionary<string, PlacementPlan>(_plans, StringComparer.Ordinal);
                if (!next.Remove(model)) return false;
                _plans = next;
                Version++;
                return true;
            }
        }

        public PlacementPlan? Current(string model) => _plans.GetValueOrDefault(model);

        private Dictionary<string, ReplicaPlacement> _replicas = new(StringComparer.Ordinal);

        /// <summary>
        /// Sets the model's hot-expert replication: layers split a replicated expert's tokens over its replicas
        /// (<see cref="ReplicaCounts"/>), and the director places replica r where <paramref name="placement"/> says.
        /// </summary>
        public void ApplyReplicas(string model, ReplicaPlacement placement)
        {
            ArgumentException.ThrowIfNullOrWhiteSpace(model);
            ArgumentNullException.ThrowIfNull(placement);
            lock (_lock)
            {
                _replicas = new Dictionary<string, ReplicaPlacement>(_replicas, StringComparer.Ordinal) { [model] = placement };
                Version++;
            }
        }

        /// <summary>Stops replicating the model's experts (layers call replica 0 only again).</summary>
        public bool RemoveReplicas(string model)
        {
            lock (_lock)
            {
                var next = new Dictionary<string, ReplicaPlacement>(_replicas, StringComparer.Ordinal);
                if (!next.Remove(model)) return false;
                _replicas = next;
                Version++;
                return true;
            }
        }

        /// <summary>How many replicas each expert of a layer has, or null when the layer is not replicated.</summary>
        public IReadOnlyList<int>? ReplicaCounts(string model, int layer) => _replicas.TryGetValue(model, out var r) ? r.Counts(layer) : null;

        public int? ReplicaSiloIndex(string model, int layer, int expert, int replica, int silos) =>
            _replicas.TryGetValue(model, out var r) && r.Silos == silos ? r.SiloOf(layer, expert, replica) : null;

        public int? SiloIndex(string model, int layer, int expert, int silos) =>
            _plans.TryGetValue(model, out var plan) && plan.Silos == silos ? plan.SiloOf(layer, expert) : null;
    }
}

namespace MoeGrains.Hosting
{
    /// <summary>Silo set-up for placement plans: <c>siloBuilder.AddMoeGrains(...).AddExpertPlacementPlans(p =&gt; p.ApplyFile("m", "plan.csv"))</c>.</summary>
    public static class ExpertPlacementPlansSiloBuilderExtensions
    {
        /// <summary>
        /// Registers the plan store the expert placement director follows (one per silo; give every silo the same plans)
        /// and lets <paramref name="configure"/> fill it. Without it, experts are placed round-robin.
        /// </summary>
        public static ISiloBuilder AddExpertPlacementPlans(this ISiloBuilder builder, Action<ExpertPlacementPlans>? configure = null)
        {
            ArgumentNullException.ThrowIfNull(builder);
            if (configure is not null)
            {
                builder.Services.AddSingleton(new PlanSetup(configure));
            }
            builder.Services.TryAddSingleton(sp =>
            {
                var plans = new ExpertPlacementPlans();
                foreach (var setup in sp.GetServices<PlanSetup>()) setup.Configure(plans);
                return plans;
            });
            builder.Services.TryAddSingleton<IExpertPlacementPlans>(sp => sp.GetRequiredService<ExpertPlacementPlans>());
            builder.Services.TryAddSingleton<ExpertTokenCounts>();
            return builder;
        }
    }

    internal sealed record PlanSetup(Action<ExpertPlacementPlans> Configure);
}
