using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Buffers.Binary;
using System.IO.Compression;
using MoeGrains.Diffusion;
using MoeGrains.Hosting;
using MoeGrains.Tests.Infrastructure;
using MoeGrains.Tests.Reliability;
using MoeGrains.Tests.Serving;

namespace MoeGrains.Tests.Diffusion;

/// <summary>The real silo host (hosts/MoeGrains.Silo, its own process) serving a tiny 3-expert diffusion model as <c>digits</c>.</summary>
public sealed class ImageSiloFixture : IAsyncLifetime
{
    private readonly TempFolder _dir = TestPaths.Temp();
    private SiloHostRunner? _host;

    public HttpClient Http => _host?.Http ?? throw new InvalidOperationException("The silo host is not started.");

    public DiffusionModelFolder Folder { get; private set; } = null!;

    public string Log => _host?.Log ?? "";

    public async Task InitializeAsync()
    {
        Folder = DiffusionTestData.Untrained(_dir.File("digits"), 3);
        _host = await SiloHostRunner.StartAsync([$"--MoeGrains:Diffusion:Models:digits={Folder.Path}"], "/health/ready", TimeSpan.FromSeconds(120), TimeSpan.FromMinutes(3));
    }

    public Task DisposeAsync()
    {
        _host?.Dispose();
        _dir.Dispose();
        return Task.CompletedTask;
    }
}

/// <summary><c>POST /v1/images/generations</c> over HTTP against the real silo host process.</summary>
public sealed class ImageHttpTests(ImageSiloFixture silo) : IClassFixture<ImageSiloFixture>
{
    private Task<HttpResponseMessage> Post(string json) =>
        silo.Http.PostAsync("/v1/images/generations", new StringContent(json, Encoding.UTF8, "application/json"));

    /// <summary>
    /// A minimal PNG reader for the grids (8-bit RGB, or a palette of 1..8 bits, not interlaced; every filter type):
    /// the red channel of each pixel, [x, y]. Written here because BigGustave's decoder rejects its own palette PNGs.
    /// </summary>
    private static byte[,] Decode(byte[] png)
    {
        Assert.Equal(new byte[] { 137, 80, 78, 71, 13, 10, 26, 10 }, png[..8]);
        int width = 0, height = 0, colourType = -1, depth = 8;
        byte[] palette = [];
        using var idat = new MemoryStream();
        for (var at = 8; at < png.Length;)
        {
            var length = BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(at));
            var type = Encoding.ASCII.GetString(png, at + 4, 4);
            var data = png.AsSpan(at + 8, length);
            if (type == "IHDR")
            {
                (width, height, depth, colourType) = (BinaryPrimitives.ReadInt32BigEndian(data), BinaryPrimitives.ReadInt32BigEndian(data[4..]), data[8], data[9]);
                Assert.True(depth == 8 || (colourType == 3 && depth is 1 or 2 or 4), $"bit depth {depth}, colour type {colourType}");
                Assert.Equal(0, data[12]);
            }
            else if (type == "PLTE") palette = data.ToArray();
            else if (type == "IDAT") idat.Write(data);
            at += 12 + length;
        }
        var bpp = colourType switch { 2 => 3, 3 => 1, 6 => 4, _ => throw new InvalidDataException($"colour type {colourType}") };
        idat.Position = 0;
        using var inflated = new MemoryStream();
        using (var z = new ZLibStream(idat, CompressionMode.Decompress)) z.CopyTo(inflated);
        var raw = inflated.ToArray();
        var stride = colourType == 3 ? (width * depth + 7) / 8 : width * bpp;
        Assert.Equal((stride + 1) * height, raw.Length);
        var rows = new byte[height, stride];
        for (var y = 0; y < height; y++)
        {
            var filter = raw[y * (stride + 1)];
            for (var i = 0; i < stride; i++)
            {
                int a = i >= bpp ? rows[y, i - bpp] : 0, b = y > 0 ? rows[y - 1, i] : 0, c = i >= bpp && y > 0 ? rows[y - 1, i - bpp] : 0;
                int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                var predictor = filter switch
                {
                    0 => 0, 1 => a, 2 => b, 3 => (a + b) / 2, 4 => pa <= pb && pa <= pc ? a : pb <= pc ? b : c,
                    _ => throw new InvalidDataException($"filter {filter}"),
                };
                rows[y, i] = (byte)(raw[y * (stride + 1) + 1 + i] + predictor);
            }
        }
        var pixels = new byte[width, height];
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                // Palette indices are packed most significant bits first.
                var index = colourType == 3 ? (rows[y, x * depth / 8] >> (8 - depth - (x * depth % 8))) & ((1 << depth) - 1) : 0;
                pixels[x, y] = colourType == 3 ? palette[3 * index] : rows[y, x * bpp];
            }
        }
        return pixels;
    }

    [Fact]
    public async Task A_good_request_returns_the_png_grid_of_the_asked_size_equal_to_sampling_in_process()
    {
        using var response = await Post("""{"model": "digits", "n": 6, "steps": 3, "top_k": 1, "seed": 5, "scale": 2, "size": "8x8"}""");
        var bytes = await response.Content.ReadAsByteArrayAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{(int)response.StatusCode} {Encoding.UTF8.GetString(bytes)}\n{silo.Log}");
        Assert.Equal("image/png", response.Content.Headers.ContentType?.MediaType);
        var actual = Decode(bytes);
        // 6 images in a 3 × 2 grid of 8×8 images at 2×, one-pixel gaps: 3·17+1 (padded to 56) by 2·17+1.
        Assert.Equal(56, actual.GetLength(0));
        Assert.Equal(35, actual.GetLength(1));

        using var local = await DiffusionEvaluation.SampleLocalAsync(silo.Folder, DiffusionTestData.Plugins, DiffusionTestData.Services, 6, 3, 1, 5);
        var expected = Decode(ImageGrid.Png(local, scale: 2));
        var differing = 0;
        for (var y = 0; y < 35; y++)
        {
            for (var x = 0; x < 56; x++)
            {
                Assert.True(Math.Abs(expected[x, y] - actual[x, y]) <= 1, $"pixel ({x}, {y}): {actual[x, y]}, in process {expected[x, y]}");
                if (expected[x, y] != actual[x, y]) differing++;
            }
        }
        Assert.True(differing < 10, $"{differing} pixels differ by one level");
    }

    [Fact]
    public async Task Base64_json_answers_the_same_kind_of_grid()
    {
        // A seed above 2^31: the sampler's seed is a long.
        using var response = await Post("""{"model": "digits", "n": 4, "steps": 2, "top_k": 0, "seed": 4294967305, "scale": 1, "response_format": "b64_json"}""");
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{(int)response.StatusCode} {text}\n{silo.Log}");
        using var doc = JsonDocument.Parse(text);
        Assert.Equal("8x8", doc.RootElement.GetProperty("size").GetString());
        Assert.Equal("digits", doc.RootElement.GetProperty("model").GetString());
        var png = Decode(Convert.FromBase64String(doc.RootElement.GetProperty("data")[0].GetProperty("b64_json").GetString()!));
        Assert.Equal(24, png.GetLength(0));             // 2·9+1, padded to a multiple of 8
        Assert.Equal(2 * 9 + 1, png.GetLength(1));
        // The gaps are the grid's frame colour; the images are greys.
        Assert.Equal(40, png[0, 0]);
        Assert.Contains(Enumerable.Range(1, 8).Select(i => png[i, i]), v => v != 40);
    }

    [Theory]
    [InlineData("""{"n": 4}""", "model")]
    [InlineData("""{"model": 3}""", "model")]
    [InlineData("""{"model": "nope"}""", "model")]
    [InlineData("""{"model": "digits", "n": 0}""", "n")]
    [InlineData("""{"model": "digits", "n": 257}""", "n")]
    [InlineData("""{"model": "digits", "n": "four"}""", "n")]
    [InlineData("""{"model": "digits", "steps": 0}""", "steps")]
    [InlineData("""{"model": "digits", "steps": 201}""", "steps")]
    [InlineData("""{"model": "digits", "top_k": 4}""", "top_k")]
    [InlineData("""{"model": "digits", "top_k": -1}""", "top_k")]
    [InlineData("""{"model": "digits", "size": "28x28"}""", "size")]
    [InlineData("""{"model": "digits", "size": 8}""", "size")]
    [InlineData("""{"model": "digits", "scale": 0}""", "scale")]
    [InlineData("""{"model": "digits", "n": 256, "scale": 32}""", "scale")]
    [InlineData("""{"model": "digits", "response_format": "url"}""", "response_format")]
    [InlineData("""not json""", "body")]
    [InlineData("""[1, 2]""", "body")]
    public async Task Bad_requests_get_400_naming_the_field(string json, string field)
    {
        using var response = await Post(json);
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode} {text}");
        using var doc = JsonDocument.Parse(text);
        var error = doc.RootElement.GetProperty("error");
        Assert.Equal(field, error.GetProperty("param").GetString());
        Assert.Contains(field == "body" ? "JSON" : field, error.GetProperty("message").GetString(), StringComparison.OrdinalIgnoreCase);
        using var live = await silo.Http.GetAsync("/health/live");
        Assert.True(live.IsSuccessStatusCode, "the silo stopped answering after a bad request");
    }
}
