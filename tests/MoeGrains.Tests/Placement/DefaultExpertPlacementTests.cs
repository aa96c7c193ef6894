using MoeGrains.Placement;

namespace MoeGrains.Tests.Placement;

public sealed class DefaultExpertPlacementTests
{
    [Fact]
    public void Equal_or_unknown_budgets_give_round_robin_with_a_layer_offset()
    {
        for (var layer = 0; layer < 3; layer++)
        {
            for (var e = 0; e < 8; e++)
            {
                Assert.Equal((e + layer) % 3, DefaultExpertPlacement.SiloIndex(layer, e, 8, [100, 100, 100]));
                Assert.Equal((e + layer) % 2, DefaultExpertPlacement.SiloIndex(layer, e, 8, [0, 500]));
            }
        }
    }

    [Theory]
    [InlineData(new long[] { 200, 100 }, 6, new[] { 4, 2 })]
    [InlineData(new long[] { 100, 300 }, 8, new[] { 2, 6 })]
    [InlineData(new long[] { 3, 2, 1 }, 8, new[] { 4, 3, 1 })]
    public void Each_layer_spreads_its_experts_in_proportion_to_the_memory_budgets(long[] budgets, int experts, int[] quotas)
    {
        Assert.Equal(quotas, DefaultExpertPlacement.Quotas(experts, budgets));
        for (var layer = 0; layer < 4; layer++)
        {
            var counts = new int[budgets.Length];
            for (var e = 0; e < experts; e++) counts[DefaultExpertPlacement.SiloIndex(layer, e, experts, budgets)]++;
            Assert.Equal(quotas, counts);
        }
        // Consecutive layers do not put expert 0 on the same silo every time.
        Assert.True(Enumerable.Range(0, experts).Select(l => DefaultExpertPlacement.SiloIndex(l, 0, experts, budgets)).Distinct().Count() == budgets.Length);
    }
}
