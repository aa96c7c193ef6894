using System.Diagnostics;
using MoeGrains.Client;
using MoeGrains.Hosting;
using MoeGrains.Security;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Security;

/// <summary>RELIABILITY.md, TLS row: a TLS-only silo refuses plaintext and badly certified clients quickly; a good client works.</summary>
public sealed class TlsClusterTests : IAsyncLifetime
{
    private const string ServerName = "moegrains-silo";
    private readonly X509 _ca = new(TestCertificates.CreateCa("MoeGrains test CA"));
    private LocalCluster _cluster = null!;
    private int _gateway;

    private sealed record X509(System.Security.Cryptography.X509Certificates.X509Certificate2 Certificate);

    public async Task InitializeAsync()
    {
        var server = TestCertificates.Issue(_ca.Certificate, ServerName);
        var ports = LocalCluster.FreePorts(2);
        _gateway = ports[1];
        _cluster = await LocalCluster.StartAsync(1, (_, silo) => silo
            .UseMoeGrainsTls(new MoeTlsOptions { Enabled = true, Certificate = server, CaCertificate = _ca.Certificate, ServerName = ServerName })
            .AddMoeGrains(o => o.Device = "cpu")
            .AddExpertPlugins(TestPaths.Plugins), basePorts: (ports[0], ports[1]));
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private async Task<MoeClient> Connect(MoeTlsOptions? tls)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        return await MoeClient.ConnectAsync(new MoeClientOptions { GatewayPort = _gateway, ClusterId = "moegrains", Tls = tls }, cts.Token).WaitAsync(cts.Token);
    }

    private MoeTlsOptions ClientTls(System.Security.Cryptography.X509Certificates.X509Certificate2? certificate, System.Security.Cryptography.X509Certificates.X509Certificate2? ca = null, string serverName = ServerName) =>
        new() { Enabled = true, Certificate = certificate, CaCertificate = ca ?? _ca.Certificate, ServerName = serverName };

    [Fact]
    public async Task A_client_with_a_certificate_from_the_cluster_ca_works()
    {
        await using var client = await Connect(ClientTls(TestCertificates.Issue(_ca.Certificate, "moegrains-client")));
        var silos = await client.SilosAsync();
        Assert.Single(silos);
    }

    public static TheoryData<string> BadClients => ["plaintext", "other CA", "expired", "not yet valid", "client expects another server name"];

    [Theory]
    [MemberData(nameof(BadClients))]
    public async Task Plaintext_and_badly_certified_clients_are_refused_within_5_seconds(string kind)
    {
        var stranger = TestCertificates.CreateCa("Stranger CA");
        MoeTlsOptions? tls = kind switch
        {
            "plaintext" => null,
            "other CA" => ClientTls(TestCertificates.Issue(stranger, "moegrains-client")),
            "expired" => ClientTls(TestCertificates.Issue(_ca.Certificate, "moegrains-client", DateTimeOffset.UtcNow.AddDays(-30), DateTimeOffset.UtcNow.AddDays(-1))),
            "not yet valid" => ClientTls(TestCertificates.Issue(_ca.Certificate, "moegrains-client", DateTimeOffset.UtcNow.AddDays(5), DateTimeOffset.UtcNow.AddDays(30))),
            _ => ClientTls(TestCertificates.Issue(_ca.Certificate, "moegrains-client"), serverName: "some-other-silo"),
        };
        var sw = Stopwatch.StartNew();
        var refused = false;
        try
        {
            await using var client = await Connect(tls);
            using var call = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await client.SilosAsync().WaitAsync(call.Token);
        }
        catch (Exception)
        {
            refused = true;
        }
        Assert.True(refused, $"a {kind} client was served");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(6), $"refusing a {kind} client took {sw.Elapsed.TotalSeconds:F1} s");
    }

    [Fact]
    public void A_missing_certificate_is_refused_before_connecting()
    {
        var e = Assert.Throws<InvalidOperationException>(() => new MoeTlsOptions { Enabled = true, CaCertificate = _ca.Certificate }.Load());
        Assert.Contains("CertificatePath", e.Message);
    }
}
