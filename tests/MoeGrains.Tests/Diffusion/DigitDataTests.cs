using BigGustave;
using MoeGrains.Diffusion;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Diffusion;

public sealed class DigitDataTests
{
    [Fact]
    public void Optdigits_and_mnist_load_with_their_held_out_parts()
    {
        var (train, held) = DigitData.Load(DiffusionTestData.Digits, DigitData.OptDigits);
        using (train)
        using (held)
        {
            Assert.Equal((3823, 1797, 8), (train.Count, held.Count, train.Size));
            Assert.Equal(-1f, train.Images.min().item<float>());
            Assert.Equal(1f, train.Images.max().item<float>());
            Assert.Equal(Enumerable.Range(0, 10), train.Labels.Distinct().Order());
        }
        var (mtrain, mheld) = DigitData.Load(DiffusionTestData.Digits, DigitData.Mnist);
        using (mtrain)
        using (mheld)
        {
            Assert.Equal((8000, 2000, 14), (mtrain.Count, mheld.Count, mtrain.Size));
            Assert.Equal(7, mtrain.Labels[0]); // the first image of the MNIST test split is a 7
        }
        Assert.Throws<ArgumentException>(() => DigitData.Load(DiffusionTestData.Digits, "cifar"));
    }

    [Fact]
    public void Kmeans_finds_separated_clusters_and_is_deterministic()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(1);
        var points = cat([randn([30, 2], generator: gen).add(10), randn([30, 2], generator: gen).sub(10), randn([30, 2], generator: gen).add(tensor(new float[] { 10, -10 }))], 0);
        var a = Partitioning.KMeansClusters(points, 3, seed: 4);
        Assert.Equal(a, Partitioning.KMeansClusters(points, 3, seed: 4));
        for (var g = 0; g < 3; g++) Assert.Single(a.Skip(g * 30).Take(30).Distinct());
        Assert.Equal(3, a.Distinct().Count());
        Assert.Equal(new[] { 0, 1, 2, 0, 1 }, Partitioning.ByClassPartitions([0, 1, 2, 3, 4], 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => Partitioning.KMeansClusters(points, 0, 1));
    }

    [Fact]
    public void The_png_grid_holds_every_image_at_its_scale()
    {
        using var scope = NewDisposeScope();
        var images = full([3, 1, 2, 2], -1f);
        images[1] = ones(1, 2, 2); // the second image is white
        var png = Png.Open(ImageGrid.Png(images, columns: 3, scale: 2, gap: 1));
        Assert.Equal((3 * 5 + 1, 5 + 1), (png.Width, png.Height));
        Assert.Equal(0, png.GetPixel(1, 1).R);     // inside image 0: black
        Assert.Equal(255, png.GetPixel(6, 1).R);   // inside image 1: white
        Assert.Throws<ArgumentException>(() => ImageGrid.Png(zeros(2, 3, 4, 4)));
        // Two colours make a 1-bit palette PNG: an 11-pixel row is padded to 16 so that it fills whole bytes (readable).
        var odd = Png.Open(ImageGrid.Png(full([2, 1, 2, 2], -1f), columns: 2, scale: 2, gap: 1));
        Assert.Equal((16, 6), (odd.Width, odd.Height));
        Assert.Equal(0, odd.GetPixel(1, 1).R);
        Assert.Equal(40, odd.GetPixel(12, 1).R);   // padding: the gap colour
    }
}
