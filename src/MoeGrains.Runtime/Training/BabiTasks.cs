using System.Globalization;
using System.Text;

namespace MoeGrains.Training;

/// <summary>One bAbI story as text: its lines, each question followed by its answer, and where the questions are.</summary>
/// <param name="Task">The task's short name (<c>qa1</c>).</param>
/// <param name="Lines">The story's lines in the language-model form (<see cref="BabiTasks.Format"/>).</param>
/// <param name="Questions">For each question: the index of its line and its answer.</param>
public sealed record BabiStory(string Task, string[] Lines, (int Line, string Answer)[] Questions);

/// <summary>
/// The bAbI tasks (Weston et al., v1.2, <c>../shared/data/qa/babi/en</c>) as language-model text. Each story becomes its
/// lines, lower-cased, one per line, every question followed on its line by its answer
/// (<c>where is mary? bathroom</c>), and a blank line ends the story. A model trained on that text answers a question
/// by continuing the story after the question mark; a question is answered exactly when the greedy answer tokens are
/// the gold answer's. The files separate question, answer and supporting facts by tabs (by <c>|</c> in this copy of task 1).
/// </summary>
public static class BabiTasks
{
    /// <summary>The file of task <paramref name="task"/> (<c>qa1</c>, <c>qa6</c>, ...) for <paramref name="split"/> (<c>train</c> or <c>test</c>).</summary>
    public static string File(string folder, string task, string split)
    {
        var number = task.StartsWith("qa", StringComparison.OrdinalIgnoreCase) ? task[2..] : task;
        if (!int.TryParse(number, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n is < 1 or > 20)
        {
            throw new ArgumentException($"Unknown bAbI task '{task}': use qa1 .. qa20.");
        }
        var en = Directory.Exists(Path.Combine(folder, "en")) ? Path.Combine(folder, "en") : folder;
        var matches = Directory.Exists(en) ? Directory.GetFiles(en, $"qa{n}_*_{split}.txt") : [];
        return matches.Length == 1 ? matches[0] : throw new FileNotFoundException($"No bAbI file for qa{n} ({split}) in '{en}'.");
    }

    /// <summary>Parses a bAbI file into stories (a line numbered 1 starts a new story).</summary>
    public static List<BabiStory> Load(string path, string task)
    {
        var stories = new List<BabiStory>();
        var lines = new List<string>();
        var questions = new List<(int, string)>();
        void Flush()
        {
            if (lines.Count > 0) stories.Add(new BabiStory(task, [.. lines], [.. questions]));
            lines.Clear();
            questions.Clear();
        }
        foreach (var raw in System.IO.File.ReadLines(path))
        {
            if (raw.Length == 0) continue;
            var space = raw.IndexOf(' ');
            if (space < 1 || !int.TryParse(raw.AsSpan(0, space), NumberStyles.Integer, CultureInfo.InvariantCulture, out var number))
            {
                throw new InvalidDataException($"{path}: a bAbI line starts with its number: '{raw}'.");
            }
            if (number == 1) Flush();
            var body = raw[(space + 1)..];
            var fields = body.Split(body.Contains('\t') ? '\t' : '|');
            if (fields.Length >= 2)
            {
                var answer = fields[1].Trim().ToLowerInvariant().Replace(",", " , ", StringComparison.Ordinal);
                questions.Add((lines.Count, string.Join(' ', answer.Split(' ', StringSplitOptions.RemoveEmptyEntries))));
                lines.Add(Format(fields[0]) + " " + questions[^1].Item2);
            }
            else
            {
                lines.Add(Format(body));
            }
        }
        Flush();
        return stories;
    }

    /// <summary>A line as the model sees it: lower case, single spaces, no trailing space.</summary>
    public static string Format(string line) => string.Join(' ', line.Trim().ToLowerInvariant().Split(' ', StringSplitOptions.RemoveEmptyEntries));

    /// <summary>The stories as one text: lines separated by a line break, stories by a blank line.</summary>
    public static string Text(IEnumerable<BabiStory> stories)
    {
        var sb = new StringBuilder();
        foreach (var s in stories)
        {
            foreach (var line in s.Lines) sb.Append(line).Append('\n');
            sb.Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>
    /// The training text of several tasks: their training stories interleaved (one of each task in turn), so that any
    /// stretch of the text, the held-out last 10% included, mixes the tasks.
    /// </summary>
    public static string TrainingText(string folder, IReadOnlyList<string> tasks) => Text(TrainingStories(folder, tasks));

    /// <summary>The training stories of several tasks, interleaved (one of each task in turn): the stories of <see cref="TrainingText"/>.</summary>
    public static List<BabiStory> TrainingStories(string folder, IReadOnlyList<string> tasks)
    {
        ArgumentNullException.ThrowIfNull(tasks);
        if (tasks.Count == 0)
        {
            throw new ArgumentException("Name at least one bAbI task.", nameof(tasks));
        }
        var all = tasks.Select(t => Load(File(folder, t, "train"), t)).ToList();
        var interleaved = new List<BabiStory>();
        for (var i = 0; i < all.Max(s => s.Count); i++)
        {
            foreach (var list in all.Where(l => i < l.Count)) interleaved.Add(list[i]);
        }
        return interleaved;
    }

    /// <summary>
    /// The stories as token ids (each as <see cref="BabiItem.From"/> encodes it, then the blank line) and, for each id,
    /// whether it is an answer token: the loss mask of training on the answers only.
    /// </summary>
    public static (int[] Ids, bool[] AnswerMask) Tokens(IEnumerable<BabiStory> stories, Func<string, int[]> encode)
    {
        ArgumentNullException.ThrowIfNull(stories);
        ArgumentNullException.ThrowIfNull(encode);
        var ids = new List<int>();
        var mask = new List<bool>();
        var blank = encode("\n");
        foreach (var story in stories)
        {
            var item = BabiItem.From(story, encode);
            var answers = new bool[item.Tokens.Length];
            foreach (var (pos, answer) in item.Questions)
            {
                for (var j = 0; j < answer.Length; j++) answers[pos + 1 + j] = true;
            }
            ids.AddRange(item.Tokens);
            mask.AddRange(answers);
            ids.AddRange(blank);
            mask.AddRange(new bool[blank.Length]);
        }
        return ([.. ids], [.. mask]);
    }
}

/// <summary>
/// A story as token ids and, for each question, the position of its last token (the question mark: the model's logits
/// there predict the answer) and the answer's token ids.
/// </summary>
public sealed record BabiItem(string Task, int[] Tokens, (int Position, int[] Answer)[] Questions)
{
    /// <summary>
    /// Tokenizes <paramref name="story"/> with <paramref name="encode"/> (the story's text as in training, ending with a
    /// line break). The question mark of each question line is found as the token before the answer's tokens.
    /// </summary>
    public static BabiItem From(BabiStory story, Func<string, int[]> encode)
    {
        ArgumentNullException.ThrowIfNull(story);
        ArgumentNullException.ThrowIfNull(encode);
        var tokens = new List<int>();
        var questions = new List<(int, int[])>();
        var q = 0;
        for (var i = 0; i < story.Lines.Length; i++)
        {
            if (q < story.Questions.Length && story.Questions[q].Line == i)
            {
                var answer = story.Questions[q].Answer;
                var line = story.Lines[i];
                var prompt = encode(line[..^answer.Length].TrimEnd());
                var answerIds = encode(" " + answer);
                tokens.AddRange(prompt);
                questions.Add((tokens.Count - 1, answerIds));
                tokens.AddRange(answerIds);
                tokens.AddRange(encode("\n"));
                q++;
            }
            else
            {
                tokens.AddRange(encode(story.Lines[i] + "\n"));
            }
        }
        return new BabiItem(story.Task, [.. tokens], [.. questions]);
    }
}
