using Microsoft.Extensions.Configuration;

namespace MoeGrains.Security;

public static class MoeTlsExtensions
{
    /// <summary>Mutual TLS for this silo's inbound (silo and gateway) and outbound connections.</summary>
    public static ISiloBuilder UseMoeGrainsTls(this ISiloBuilder builder, MoeTlsOptions? options = null)
    {
        options ??= builder.Configuration.GetSection(MoeTlsOptions.SectionName).Get<MoeTlsOptions>() ?? new MoeTlsOptions();
        return options.Enabled ? builder.UseTls(options.Apply) : builder;
    }

    /// <summary>Mutual TLS for a client's connections to gateways.</summary>
    public static IClientBuilder UseMoeGrainsTls(this IClientBuilder builder, MoeTlsOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.Enabled ? builder.UseTls(options.Apply) : builder;
    }
}
