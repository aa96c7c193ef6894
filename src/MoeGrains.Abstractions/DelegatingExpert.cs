using TorchSharp;

namespace MoeGrains;

/// <summary>
/// Middleware for experts (timing, metrics, quantisation, fault injection): wraps another expert and forwards to it
/// unless a member is overridden.
/// </summary>
public abstract class DelegatingExpert(IExpert inner) : IExpert
{
    protected IExpert Inner { get; } = inner ?? throw new ArgumentNullException(nameof(inner));

    public virtual ExpertDescriptor Descriptor => Inner.Descriptor;

    public virtual torch.Tensor Forward(torch.Tensor hiddenStates) => Inner.Forward(hiddenStates);

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            Inner.Dispose();
        }
    }
}

/// <summary>Middleware for routers: wraps another router and forwards to it unless a member is overridden.</summary>
public abstract class DelegatingRouter(IRouter inner) : IRouter
{
    protected IRouter Inner { get; } = inner ?? throw new ArgumentNullException(nameof(inner));

    public virtual RouterDescriptor Descriptor => Inner.Descriptor;

    public virtual RoutingDecision Route(torch.Tensor hiddenStates, ExpertAvailability available) => Inner.Route(hiddenStates, available);

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing)
    {
        if (disposing)
        {
            Inner.Dispose();
        }
    }
}

/// <summary>Composes expert middleware: <c>new ExpertBuilder(expert).Use(e =&gt; new TimedExpert(e)).Build()</c>.</summary>
public sealed class ExpertBuilder(IExpert inner)
{
    private readonly List<Func<IExpert, IExpert>> _stages = [];

    public ExpertBuilder Use(Func<IExpert, IExpert> stage)
    {
        ArgumentNullException.ThrowIfNull(stage);
        _stages.Add(stage);
        return this;
    }

    /// <summary>The first stage added is the outermost.</summary>
    public IExpert Build()
    {
        var expert = inner;
        for (var i = _stages.Count - 1; i >= 0; i--)
        {
            expert = _stages[i](expert);
        }
        return expert;
    }
}
