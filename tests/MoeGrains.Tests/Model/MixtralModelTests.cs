using MoeGrains.Training;
using MoeGrains.Checkpoints;
using MoeGrains.Generation;
using MoeGrains.Models;
using MoeGrains.Plugins.Mixtral;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using MoeGrains.Tests.Infrastructure;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Model;

public sealed class MixtralModelTests
{
    private static (TokenCorpus Corpus, CharTokenizer Tokenizer) Corpus()
    {
        var text = TinyLanguageModel.Corpus();
        var tokenizer = CharTokenizer.FromText(text);
        return (new TokenCorpus(tokenizer.Encode(text)), tokenizer);
    }

    private static CausalLmTrainer Trainer(MixtralForCausalLM model, TokenCorpus corpus, int steps, int checkpointEvery = 0) => new(model, (x, y) =>
    {
        var l = model.Loss(x, y);
        return (l.Total, l.LanguageModel, l.LoadBalancing);
    }, corpus, new CausalLmTrainingOptions
    {
        Steps = steps, BatchSize = 8, BlockSize = 32, WarmupSteps = 5, LearningRate = 1e-2, EvalEvery = 0, EvalWindows = 8,
        CheckpointEvery = checkpointEvery, LogEvery = 1, Seed = 3, FinalFullEvaluation = false,
    });

    [Fact]
    public void Training_lowers_the_loss_on_a_tiny_corpus()
    {
        var (corpus, tokenizer) = Corpus();
        using var model = new MixtralForCausalLM(TinyLanguageModel.Config(tokenizer.VocabSize), seed: 1);
        using var dir = TestPaths.Temp();
        var trainer = Trainer(model, corpus, 40);
        var (before, _) = trainer.Evaluate(8);
        var progress = new List<TrainingProgress>();
        var summary = trainer.Run(dir.Path, model.Config.ToJson(), MixtralCheckpointMetadata.Create(model.Config, tokenizer), resume: false,
            e => { if (e is TrainingProgress p) progress.Add(p); });
        Assert.True(before > 2.5, $"an untrained model should be near ln({tokenizer.VocabSize}) = {Math.Log(tokenizer.VocabSize):F2}, got {before:F3}");
        Assert.True(summary.HeldOutLoss < before - 1.0, $"held-out loss {before:F3} -> {summary.HeldOutLoss:F3}");
        Assert.True(progress[^1].LanguageModelLoss < progress[0].LanguageModelLoss - 1.0);
        Assert.All(progress, p => Assert.InRange(p.AuxiliaryLoss, 1.9, 4.0)); // top-2 Switch loss: 2 when perfectly balanced
        Assert.Equal(40, summary.Steps);
        Assert.True(File.Exists(Path.Combine(dir.Path, LanguageModelCheckpoint.TrainingStateFile)));
    }

    [Fact]
    public void A_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one()
    {
        var (corpus, tokenizer) = Corpus();
        using var dirA = TestPaths.Temp();
        using var dirB = TestPaths.Temp();
        var metadata = MixtralCheckpointMetadata.Create(TinyLanguageModel.Config(tokenizer.VocabSize), tokenizer);
        using var whole = new MixtralForCausalLM(TinyLanguageModel.Config(tokenizer.VocabSize), seed: 2);
        Trainer(whole, corpus, 12).Run(dirA.Path, whole.Config.ToJson(), metadata, resume: false);

        using (var first = new MixtralForCausalLM(TinyLanguageModel.Config(tokenizer.VocabSize), seed: 2))
        {
            // Interrupted right after the checkpoint of step 6.
            using var stop = new CancellationTokenSource();
            Assert.ThrowsAny<OperationCanceledException>(() => Trainer(first, corpus, 12, checkpointEvery: 6).Run(dirB.Path, first.Config.ToJson(), metadata, resume: false,
                e => { if (e is CheckpointWritten { Step: 6 }) stop.Cancel(); }, stop.Token));
        }
        using var resumed = new MixtralForCausalLM(TinyLanguageModel.Config(tokenizer.VocabSize), seed: 99); // weights come from the checkpoint
        var events = new List<TrainingEvent>();
        Trainer(resumed, corpus, 12).Run(dirB.Path, resumed.Config.ToJson(), metadata, resume: true, events.Add);
        Assert.Contains(events, e => e is TrainingResumed { Step: 6 });
        foreach (var ((name, a), (_, b)) in whole.named_parameters().Zip(resumed.named_parameters()))
        {
            Assert.True(a.allclose(b, rtol: 1e-5, atol: 1e-6), $"{name} differs after resuming");
        }
    }

    [Fact]
    public void The_checkpoint_has_Mixtral_names_config_and_metadata_and_loads_back_to_the_same_logits()
    {
        using var dir = TestPaths.Temp();
        var path = TinyLanguageModel.Write(dir.Path, seed: 11);
        var (file, configJson) = LanguageModelCheckpoint.Open(dir.Path);
        var config = MixtralConfig.FromJson(configJson!);
        Assert.Contains("\"model_type\": \"mixtral\"", configJson);
        Assert.Contains("\"num_local_experts\": 4", configJson);
        foreach (var name in new[]
        {
            "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.1.input_layernorm.weight",
            "model.layers.1.post_attention_layernorm.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight", "model.layers.1.block_sparse_moe.gate.weight",
            "model.layers.1.block_sparse_moe.experts.3.w1.weight", "model.layers.1.block_sparse_moe.experts.3.w2.weight", "model.layers.1.block_sparse_moe.experts.3.w3.weight",
        })
        {
            Assert.True(file.Tensors.ContainsKey(name), $"missing {name}");
        }
        Assert.Equal(new long[] { 48, 32 }, file.Tensors["model.layers.0.block_sparse_moe.experts.0.w1.weight"].Shape);
        Assert.Equal(new long[] { 16, 32 }, file.Tensors["model.layers.0.self_attn.k_proj.weight"].Shape); // 2 key/value heads of 8
        var spec = ModelSpec.FromCheckpoint("lm", file);
        Assert.Equal((2, 4, 32, 48, 2, "swiglu", "topk"), (spec.Layers, spec.Experts, spec.DModel, spec.DFf, spec.TopK, spec.ExpertPlugin, spec.RouterPlugin));
        Assert.True(file.HasChecksums);

        using var original = new MixtralForCausalLM(config, seed: 11);
        using var loaded = new MixtralForCausalLM(config, seed: 12);
        var weights = LanguageModelCheckpoint.LoadAll(file);
        loaded.LoadStateDict(weights);
        foreach (var t in weights.Values) t.Dispose();
        using var ids = tensor(new long[] { 1, 2, 3, 4, 5, 6 }).unsqueeze(0);
        using var _ = no_grad();
        var (a, _) = original.forward(ids);
        var (b, _) = loaded.forward(ids);
        Assert.True(a.eq(b).all().item<bool>());
        Assert.Equal(TinyLanguageModel.Corpus(1).Distinct().Count(), TextTokenizers.FromMetadata(file.Metadata).VocabSize);
    }

    [Fact]
    public void Decoding_with_the_KV_cache_gives_the_logits_of_the_full_sequence()
    {
        var config = TinyLanguageModel.Config(20, context: 8);
        using var model = new MixtralForCausalLM(config, seed: 4);
        using var _ = no_grad();
        var sequence = new long[] { 3, 1, 4, 1, 5, 9, 2, 6 };
        using var ids = tensor(sequence).unsqueeze(0);
        var (full, _) = model.forward(ids);
        var caches = model.NewCaches();
        var (prefix, _) = model.forward(ids.narrow(1, 0, 3), caches);
        Assert.True(prefix.allclose(full.narrow(1, 0, 3), rtol: 1e-4, atol: 1e-5));
        for (var t = 3; t < sequence.Length; t++)
        {
            var (step, _) = model.forward(ids.narrow(1, t, 1), caches);
            Assert.True(step.allclose(full.narrow(1, t, 1), rtol: 1e-4, atol: 1e-5), $"position {t}");
        }
        Assert.Equal(8, caches[0].Position);
        // Past the context the cache slides: it keeps the last 8 positions.
        model.forward(tensor(new long[] { 7 }).view(1, 1), caches);
        Assert.Equal(8, caches[0].Length);
        foreach (var c in caches) c.Dispose();
    }

    [Fact]
    public void Invalid_sizes_are_refused_with_the_reason()
    {
        Assert.Contains("num_attention_heads", Assert.Throws<ArgumentException>(() => new MixtralForCausalLM(TinyLanguageModel.Config(10) with { NumAttentionHeads = 5 })).Message);
        Assert.Contains("num_experts_per_tok", Assert.Throws<ArgumentException>(() => new MixtralForCausalLM(TinyLanguageModel.Config(10) with { NumExpertsPerTok = 9 })).Message);
        Assert.Contains("num_key_value_heads", Assert.Throws<ArgumentException>(() => new MixtralForCausalLM(TinyLanguageModel.Config(10) with { NumKeyValueHeads = 3 })).Message);
    }
}
