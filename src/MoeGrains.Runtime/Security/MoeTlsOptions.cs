using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Orleans.Connections.Security;

namespace MoeGrains.Security;

/// <summary>
/// Mutual TLS between silos and clients, bound from the configuration section <c>Tls</c>. Every peer presents a
/// certificate issued by <see cref="CaCertificatePath"/>; expired, wrongly named, otherwise-issued and missing
/// certificates, and plaintext peers, are refused during the handshake.
/// </summary>
public sealed class MoeTlsOptions
{
    public const string SectionName = "Tls";

    /// <summary>Turns TLS on (default off).</summary>
    public bool Enabled { get; set; }

    /// <summary>This process's certificate with its private key (PKCS#12 / .pfx).</summary>
    public string? CertificatePath { get; set; }

    public string? CertificatePassword { get; set; }

    /// <summary>The certificate authority every peer's certificate must chain to (PEM or DER).</summary>
    public string? CaCertificatePath { get; set; }

    /// <summary>The DNS name silos' certificates must carry (checked by whoever connects to a silo).</summary>
    public string ServerName { get; set; } = "moegrains-silo";

    /// <summary>How long a handshake may take before the connection is dropped (default 5 s).</summary>
    public int HandshakeTimeoutMs { get; set; } = 5000;

    /// <summary>Loaded certificates, when given in code rather than by path.</summary>
    public X509Certificate2? Certificate { get; set; }

    public X509Certificate2? CaCertificate { get; set; }

    internal (X509Certificate2 Certificate, X509Certificate2 Ca) Load()
    {
        var certificate = Certificate ?? (CertificatePath is { Length: > 0 } path
            ? X509CertificateLoader.LoadPkcs12FromFile(path, CertificatePassword)
            : throw new InvalidOperationException("Tls:CertificatePath is required when Tls:Enabled is true."));
        if (!certificate.HasPrivateKey)
        {
            throw new InvalidOperationException("The TLS certificate has no private key (use a .pfx that includes it).");
        }
        var ca = CaCertificate ?? (CaCertificatePath is { Length: > 0 } caPath
            ? X509CertificateLoader.LoadCertificateFromFile(caPath)
            : throw new InvalidOperationException("Tls:CaCertificatePath is required when Tls:Enabled is true."));
        return (certificate, ca);
    }

    /// <summary>Applies these settings to Orleans' TLS options (used for silos and clients alike).</summary>
    internal void Apply(TlsOptions tls)
    {
        var (certificate, ca) = Load();
        tls.LocalCertificate = certificate;
        tls.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        tls.HandshakeTimeout = TimeSpan.FromMilliseconds(HandshakeTimeoutMs);
        tls.OnAuthenticateAsClient = (_, ssl) => ssl.TargetHost = ServerName;
        tls.RemoteCertificateValidation = (remote, _, errors) => Validate(remote, errors, ca);
    }

    /// <summary>The peer's certificate chains to our CA, is within its validity period, and (towards silos) carries the server name.</summary>
    internal static bool Validate(X509Certificate2? remote, SslPolicyErrors errors, X509Certificate2 ca)
    {
        if (remote is null || (errors & (SslPolicyErrors.RemoteCertificateNotAvailable | SslPolicyErrors.RemoteCertificateNameMismatch)) != 0)
        {
            return false;
        }
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(remote);
    }
}
