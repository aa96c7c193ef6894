using MoeGrains.Training;
using MoeGrains.Generation;
using MoeGrains.Plugins.Mixtral;
using MoeGrains.Plugins.Mixtral.Tokenizers;
using static TorchSharp.torch;

namespace MoeGrains.Tests.Model;

/// <summary>bAbI trained on its answers only: the loss mask, the masked batches and the loss they give.</summary>
public sealed class AnswerLossTests
{
    private static string BabiFolder() =>
        Path.GetDirectoryName(Path.GetDirectoryName(Placement.PlacementData.File("qa", "babi", "en", "qa1_single-supporting-fact_train.txt")))!;

    [Fact]
    public void The_answer_mask_marks_each_answer_token_and_masked_batches_ignore_the_rest()
    {
        var stories = BabiTasks.TrainingStories(BabiFolder(), ["qa1"]).Take(40).ToList();
        var tokenizer = WordTokenizer.FromText(BabiTasks.Text(stories));
        var (ids, mask) = BabiTasks.Tokens(stories, tokenizer.Encode);
        Assert.Equal(tokenizer.Encode(BabiTasks.Text(stories)), ids); // the same tokens as the training text
        Assert.Equal(stories.Sum(s => s.Questions.Length), mask.Count(m => m)); // qa1 answers are one word
        var answers = stories.SelectMany(s => s.Questions.Select(q => q.Answer)).ToList();
        Assert.Equal(answers, ids.Where((_, i) => mask[i]).Select(t => tokenizer.Decode([t])));
        for (var i = 0; i < ids.Length; i++)
        {
            if (mask[i]) Assert.Equal("?", tokenizer.Decode([ids[i - 1]])); // every answer follows its question mark
        }

        var corpus = new TokenCorpus(ids, 0.1, mask);
        var (x, y) = corpus.TrainingBatch(3, 4, 32, 1337);
        using (x)
        using (y)
        {
            var targets = y.data<long>().ToArray();
            Assert.Contains(targets, t => t == TokenCorpus.IgnoredTarget);
            Assert.Contains(targets, t => t >= 0);
            Assert.All(targets.Where(t => t >= 0), t => Assert.Contains(tokenizer.Decode([(int)t]), answers));
        }
        Assert.Throws<ArgumentException>(() => new TokenCorpus(ids, 0.1, mask.Take(5).ToArray()));
    }

    [Fact]
    public void The_masked_loss_is_the_cross_entropy_of_the_answer_positions_alone_and_a_few_steps_lower_it()
    {
        var stories = BabiTasks.TrainingStories(BabiFolder(), ["qa1"]).Take(60).ToList();
        var tokenizer = WordTokenizer.FromText(BabiTasks.Text(stories));
        var (ids, mask) = BabiTasks.Tokens(stories, tokenizer.Encode);
        var corpus = new TokenCorpus(ids, 0.1, mask);
        using var model = new MixtralForCausalLM(TinyLanguageModel.Config(tokenizer.VocabSize), 7);
        var (x, y) = corpus.TrainingBatch(0, 8, 32, 7);
        using (x)
        using (y)
        {
            using var _ = no_grad();
            using var loss = model.Loss(x, y);
            var (logits, routing) = model.forward(x);
            using (logits)
            {
                foreach (var r in routing) r.Dispose();
                using var logp = logits.log_softmax(-1);
                var lp = logp.view(-1, tokenizer.VocabSize);
                var targets = y.reshape(-1).data<long>().ToArray();
                var kept = targets.Select((t, i) => (t, i)).Where(p => p.t >= 0).ToArray();
                var manual = -kept.Average(p => lp[p.i, p.t].item<float>());
                Assert.Equal(manual, loss.LanguageModel.item<float>(), 4);
            }
        }

        var options = new CausalLmTrainingOptions { Steps = 30, BatchSize = 8, BlockSize = 32, WarmupSteps = 3, EvalEvery = 0, CheckpointEvery = 0, EvalWindows = 8, Seed = 7, FinalFullEvaluation = false };
        var trainer = new CausalLmTrainer(model, (a, b) =>
        {
            var l = model.Loss(a, b);
            return (l.Total, l.LanguageModel, l.LoadBalancing);
        }, corpus, options);
        var (before, targetsCounted) = trainer.Evaluate(8);
        Assert.InRange(targetsCounted, 1, 8 * 32 / 4); // answers only: at most about one target in six here
        using var folder = Infrastructure.TestPaths.Temp();
        var summary = trainer.Run(folder.Path, TinyLanguageModel.Config(tokenizer.VocabSize).ToJson(), new Dictionary<string, string>(), resume: false);
        Assert.True(summary.HeldOutLoss < before - 0.3, $"answer loss {before:F3} → {summary.HeldOutLoss:F3}");
    }
}
