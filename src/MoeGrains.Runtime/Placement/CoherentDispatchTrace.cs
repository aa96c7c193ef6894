namespace MoeGrains.Placement;

/// <summary>
/// The placement objective of context-coherent dispatch, as a trace the solver takes. Under that dispatch a token moves
/// to the silo of its top-1 expert at every block (one message when that silo changes) and calls each of its other
/// chosen experts where they are (a call and an answer when they are elsewhere). So the cost a plan can change is
/// <c>sum over blocks [top1(l) and top1(l+1) apart] + 2 [top1(l) and other(l) apart]</c>: transitions top-1 to top-1
/// between consecutive layers with weight 1, and edges inside a layer from the top-1 expert to each other chosen expert
/// with weight 2 (a transition from a layer to itself). ExFlow's all-pairs counts (<see cref="RoutingTrace.FromTokenRoutes"/>)
/// are the right objective for top-1 routing, where both coincide.
/// </summary>
public static class CoherentDispatchTrace
{
    /// <param name="routes">Per-token routes whose experts are in the router's order (top-1 first), as the recorder keeps them.</param>
    public static RoutingTrace FromTokenRoutes(IEnumerable<TokenRoute> routes, int experts)
    {
        ArgumentNullException.ThrowIfNull(routes);
        ArgumentOutOfRangeException.ThrowIfLessThan(experts, 1);
        var counts = new Dictionary<(int, int), double[]>();
        double[] Matrix(int from, int to)
        {
            if (!counts.TryGetValue((from, to), out var m)) counts[(from, to)] = m = new double[experts * experts];
            return m;
        }
        foreach (var route in routes)
        {
            for (var i = 0; i < route.Layers.Count; i++)
            {
                var layer = route.Layers[i];
                if (layer.Experts.Length == 0) continue;
                if (layer.Experts.Any(e => e < 0 || e >= experts))
                {
                    throw new ArgumentException($"Token {route.Token}, layer {layer.Layer}: expert ids must be in 0..{experts - 1}.", nameof(routes));
                }
                var top = layer.Experts[0];
                foreach (var other in layer.Experts.Skip(1))
                {
                    Matrix(layer.Layer, layer.Layer)[top * experts + other] += 2;
                }
                if (i > 0 && route.Layers[i - 1].Experts.Length > 0)
                {
                    var previous = route.Layers[i - 1];
                    Matrix(previous.Layer, layer.Layer)[previous.Experts[0] * experts + top] += 1;
                }
            }
        }
        return new RoutingTrace(experts, counts.Select(c => new LayerTransition(c.Key.Item1, c.Key.Item2, c.Value)));
    }
}
