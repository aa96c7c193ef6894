using Microsoft.Extensions.DependencyInjection;
using MoeGrains.Client;
using MoeGrains.Hosting;
using MoeGrains.Models;
using MoeGrains.Plugins;
using static TorchSharp.torch;

// 1. Reach a cluster: connect to a running one (--gateway PORT --model NAME), or start two silos in this process.
var gateway = args.SkipWhile(a => a != "--gateway").Skip(1).Select(int.Parse).FirstOrDefault();
var model = args.SkipWhile(a => a != "--model").Skip(1).FirstOrDefault() ?? "sample";
MoeClient client;
if (gateway > 0)
{
    client = await MoeClient.ConnectAsync(new MoeClientOptions { GatewayPort = gateway });
}
else
{
    // 2. An embedded cluster needs a checkpoint: write a small one with the built-in SwiGLU plugin.
    var plugins = Path.Combine(AppContext.BaseDirectory, "plugins");
    var checkpoint = Path.Combine(Path.GetTempPath(), "moegrains-sample.safetensors");
    PluginFactory.CreateCheckpoint(PluginCatalog.Load(plugins), new ModelSpec(model, 1, 4, 64, 128, 2, "swiglu", "topk"),
        checkpoint, new ServiceCollection().AddLogging().BuildServiceProvider());
    client = await MoeClient.StartEmbeddedAsync(2, (_, silo) => silo.AddMoeGrains(o =>
    {
        o.Device = "cpu";
        o.PluginFolder = plugins;
        o.Models[model] = checkpoint;
    }));
}

await using (client)
{
    // 3. Ask what the cluster is made of.
    foreach (var silo in await client.SilosAsync())
    {
        Console.WriteLine($"silo {silo.Silo}: {silo.Device}, {silo.MemoryBudgetBytes / (1 << 20)} MiB budget");
    }
    var info = await client.ModelAsync(model);
    Console.WriteLine($"model {info.Name}: {info.Layers} layer(s), {info.Experts} experts, d_model {info.DModel}, top-{info.TopK}");

    // 4. Run one MoE layer on 16 tokens and see where each expert ran.
    using var hidden = randn(16, info.DModel);
    var result = await client.ForwardLayerAsync(model, 0, hidden);
    foreach (var call in result.Calls)
    {
        Console.WriteLine($"expert {call.Expert}: {call.Tokens} tokens on {call.Silo}, {call.ComputeMs:F2} ms");
    }
    Console.WriteLine($"output [{string.Join(", ", result.Output.Shape)}], {result.CrossSiloBytes} bytes between silos");
}
