using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using MoeGrains.Client;
using MoeGrains.Hosting;
using MoeGrains.Security;
using MoeGrains.Tests.Infrastructure;

namespace MoeGrains.Tests.Security;

/// <summary>RELIABILITY.md, TLS row: a TLS-only silo refuses plaintext and badly certified clients quickly; a good client works.</summary>
[Collection(MoeGrains.Tests.Reliability.TimedProcessCollection.Name)]
public sealed class TlsClusterTests : IAsyncLifetime
{
    private const string ServerName = "moegrains-silo";
    private readonly X509 _ca = new(TestCertificates.CreateCa("MoeGrains test CA"));
    private LocalCluster _cluster = null!;
    private int _gateway;
    private int _siloPort;

    private sealed record X509(System.Security.Cryptography.X509Certificates.X509Certificate2 Certificate);

    public async Task InitializeAsync()
    {
        var server = TestCertificates.Issue(_ca.Certificate, ServerName);
        var ports = LocalCluster.FreePorts(2);
        _gateway = ports[1];
        _siloPort = ports[0];
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

    [Fact]
    public async Task A_peer_presenting_no_certificate_is_cut_off_within_5_seconds()
    {
        // Below our client (which refuses to start without a certificate): a raw TLS handshake to the gateway with no
        // client certificate. The silo requires one, so the connection ends (handshake failure or close) instead of
        // carrying any Orleans traffic.
        var sw = Stopwatch.StartNew();
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, _gateway);
        await using var ssl = new SslStream(tcp.GetStream(), leaveInnerStreamOpen: false, (_, _, _, _) => true);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        var cutOff = false;
        try
        {
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = ServerName }, cts.Token);
            // TLS 1.3 finishes the client's side before the server has judged the (absent) client certificate:
            // the refusal then arrives as an alert or a closed stream on the first read.
            await ssl.WriteAsync(new byte[64], cts.Token);
            var read = await ssl.ReadAsync(new byte[256], cts.Token);
            cutOff = read == 0;
        }
        catch (Exception e) when (e is System.Security.Authentication.AuthenticationException or IOException or SocketException)
        {
            cutOff = true;
        }
        Assert.True(cutOff, "a peer without a certificate got an answer");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"cutting off a peer without a certificate took {sw.Elapsed.TotalSeconds:F1} s");
    }

    public static TheoryData<string> BadSilos => ["plaintext", "other CA"];

    [Theory]
    [MemberData(nameof(BadSilos))]
    public async Task A_plaintext_or_badly_certified_silo_cannot_join_the_tls_cluster(string kind)
    {
        // A second silo aims at the TLS silo as its primary (same cluster id): plaintext, or TLS with a certificate
        // from another CA. It must not become a member: its start fails or never completes, and the TLS silo's
        // membership keeps exactly one active silo.
        var ports = LocalCluster.FreePorts(2);
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.UseOrleans(silo =>
        {
            silo.UseLocalhostClustering(ports[0], ports[1], new IPEndPoint(IPAddress.Loopback, _siloPort), serviceId: "moegrains", clusterId: "moegrains");
            if (kind == "other CA")
            {
                var stranger = TestCertificates.CreateCa("Stranger CA");
                silo.UseMoeGrainsTls(new MoeTlsOptions { Enabled = true, Certificate = TestCertificates.Issue(stranger, ServerName), CaCertificate = stranger, ServerName = ServerName });
            }
            silo.AddMoeGrains(o => o.Device = "cpu");
        });
        using var intruder = builder.Build();
        var joined = false;
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(8)))
        {
            try
            {
                await intruder.StartAsync(cts.Token);
                joined = true;
            }
            catch (Exception)
            {
                // Refused: the start failed or was cut short by the deadline.
            }
        }
        try
        {
            var management = _cluster.GrainFactory.GetGrain<IManagementGrain>(0);
            var active = await management.GetHosts(onlyActive: true);
            Assert.False(joined && active.Count > 1, $"a {kind} silo joined the TLS cluster");
            Assert.Single(active);
        }
        finally
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            try { await intruder.StopAsync(stop.Token); } catch (Exception) { /* it never fully started */ }
        }
    }
}
