using MoeGrains.Training;
using MoeGrains.Generation;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Model;

public sealed class AdamWTests
{
    [Fact]
    public void Two_steps_match_the_update_rule_computed_by_hand()
    {
        double[] start = [1.0, -2.0, 0.5, 3.0];
        double[][] grads = [[0.5, -1.0, 2.0, 0.0], [0.1, 0.3, -0.2, 1.0]];
        const double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, decay = 0.1, lr = 0.01;
        using var p = new Parameter(tensor(start.Select(v => (float)v).ToArray(), new long[] { 2, 2 }));
        using var optimizer = new AdamW([("w", p)], beta1, beta2, eps, decay);

        var expected = (double[])start.Clone();
        var m = new double[4];
        var v = new double[4];
        for (var step = 1; step <= 2; step++)
        {
            p.grad = tensor(grads[step - 1].Select(x => (float)x).ToArray(), new long[] { 2, 2 });
            optimizer.Step(lr);
            for (var i = 0; i < 4; i++)
            {
                var g = grads[step - 1][i];
                m[i] = beta1 * m[i] + (1 - beta1) * g;
                v[i] = beta2 * v[i] + (1 - beta2) * g * g;
                expected[i] *= 1 - lr * decay; // decoupled decay: a matrix
                var mHat = m[i] / (1 - Math.Pow(beta1, step));
                var vHat = v[i] / (1 - Math.Pow(beta2, step));
                expected[i] -= lr * mHat / (Math.Sqrt(vHat) + eps);
            }
            var got = p.detach().data<float>().ToArray();
            for (var i = 0; i < 4; i++) Assert.Equal(expected[i], got[i], 5);
        }
        Assert.Equal(2, optimizer.Steps);
    }
}
