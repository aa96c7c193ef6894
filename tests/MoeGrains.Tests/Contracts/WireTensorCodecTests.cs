using CsCheck;
using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Contracts;
using Orleans.Serialization;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Contracts;

public sealed class WireTensorCodecTests
{
    private static readonly Serializer Serializer = new ServiceCollection()
        .AddSerializer(b => b.AddAssembly(typeof(WireTensor).Assembly))
        .BuildServiceProvider()
        .GetRequiredService<Serializer>();

    private static readonly Gen<TensorDType> GenDType = Gen.Int[1, 4].Select(i => (TensorDType)i);
    private static readonly Gen<long[]> GenShape = Gen.Int[0, 4].SelectMany(rank => Gen.Long[0, 7].Array[rank]);

    [Fact]
    public void Every_dtype_and_shape_round_trips_through_the_orleans_codec()
    {
        Gen.Select(GenDType, GenShape, Gen.Int[0, 10_000]).Sample((dtype, shape, seed) =>
        {
            using var scope = NewDisposeScope();
            manual_seed(seed);
            var x = randn(shape).mul(3);
            var wire = WireTensor.FromTensor(x, dtype);
            var bytes = Serializer.SerializeToArray(wire);
            var back = Serializer.Deserialize<WireTensor>(bytes)!;

            Assert.Equal(dtype, back.DType);
            Assert.Equal(shape, back.Shape);
            Assert.True(back.Data.Span.SequenceEqual(wire.Data.Span), "data bytes differ after the round trip");
            Assert.True(back.Scales.SequenceEqual(wire.Scales), "scales differ after the round trip");
            // One block per buffer: the message is the data plus a small, bounded header.
            Assert.InRange(bytes.Length, wire.Data.Length, wire.Data.Length + wire.Scales.Length * 4 + 64 + shape.Length * 8);

            var y = back.ToTensor();
            var tolerance = dtype switch
            {
                TensorDType.Float32 => 0.0,
                TensorDType.Float16 => 2e-3,
                TensorDType.BFloat16 => 1e-2,
                _ => 1.0 / 127 + 1e-6,
            };
            if (x.numel() > 0)
            {
                // Relative to each row's magnitude (int8 scales are per row).
                var scale = shape.Length <= 1 ? x.abs().max().clamp_min(1e-6) : x.abs().amax(new long[] { -1 }, keepdim: true).clamp_min(1e-6);
                var err = (y - x).abs().div(dtype == TensorDType.Int8 ? scale : x.abs().clamp_min(1e-3)).max().item<float>();
                Assert.True(err <= tolerance * 1.01 + 1e-7, $"{dtype} [{string.Join(",", shape)}] error {err} above {tolerance}");
            }
        }, iter: 200);
    }

    [Fact]
    public void Float32_round_trip_is_bit_exact()
    {
        using var x = randn(17, 33);
        var back = Serializer.Deserialize<WireTensor>(Serializer.SerializeToArray(WireTensor.FromTensor(x)))!;
        using var y = back.ToTensor();
        Assert.True(x.eq(y).all().item<bool>());
    }

    [Fact]
    public void Decoding_refuses_a_payload_whose_declared_shape_does_not_match_its_bytes()
    {
        var wire = new WireTensor(TensorDType.Float32, [2, 3], new byte[24]);
        var bytes = Serializer.SerializeToArray(wire);
        // Find the encoded dim "3" (8 bytes little-endian) and change it to 4: 2*4*4 = 32 != 24.
        var index = FindDim(bytes, 3);
        bytes[index] = 4;
        var e = Assert.ThrowsAny<Exception>(() => Serializer.Deserialize<WireTensor>(bytes));
        Assert.Contains("Byte length mismatch", Flatten(e));
    }

    [Fact]
    public void Decoding_refuses_a_shape_whose_product_overflows()
    {
        var wire = new WireTensor(TensorDType.Float32, [2, 3], new byte[24]);
        var bytes = Serializer.SerializeToArray(wire);
        var index = FindDim(bytes, 3);
        BitConverter.GetBytes(long.MaxValue / 2).CopyTo(bytes, index);
        var e = Assert.ThrowsAny<Exception>(() => Serializer.Deserialize<WireTensor>(bytes));
        Assert.Contains("overflow", Flatten(e));
    }

    private static int FindDim(byte[] bytes, long value)
    {
        var pattern = BitConverter.GetBytes(value);
        for (var i = 0; i + 8 <= bytes.Length; i++)
        {
            if (bytes.AsSpan(i, 8).SequenceEqual(pattern)) return i;
        }
        throw new InvalidOperationException("dimension not found");
    }

    private static string Flatten(Exception e) => e.InnerException is null ? e.Message : e.Message + " | " + Flatten(e.InnerException);
}
