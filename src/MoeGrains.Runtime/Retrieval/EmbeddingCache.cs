using System.Security.Cryptography;
using System.Text;
using MoeGrains.Checkpoints;
using static TorchSharp.torch;

namespace MoeGrains.Retrieval;

/// <summary>
/// Embeddings on disk, so that a corpus is encoded once per model: safetensors files under
/// <c>{folder}/{scope}/</c>, one per chunk of texts, named by the expert, the role and a hash of the chunk's texts (a
/// changed text is a new file, never a stale vector). Chunks also make a long encoding resumable.
/// </summary>
public sealed class EmbeddingCache(string folder)
{
    /// <summary>Texts per cached chunk.</summary>
    public const int DEFAULT_CHUNK = 256;

    public string Folder { get; } = Path.GetFullPath(folder);

    /// <summary><c>MOEGRAINS_CACHE</c>, else <c>$XDG_CACHE_HOME/moegrains</c>, else <c>~/.cache/moegrains</c>; embeddings go in <c>embeddings/</c> below it.</summary>
    public static string DefaultFolder
    {
        get
        {
            if (Environment.GetEnvironmentVariable("MOEGRAINS_CACHE") is { Length: > 0 } env)
            {
                return Path.Combine(env, "embeddings");
            }
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var root = xdg is { Length: > 0 } ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "moegrains", "embeddings");
        }
    }

    /// <summary>
    /// The embeddings <c>[texts, dim]</c> of <paramref name="texts"/> by <paramref name="expert"/>, read from the cache
    /// where present, else encoded (chunk by chunk) and stored. <paramref name="variant"/> names settings that change
    /// the vectors (such as a truncation length).
    /// </summary>
    public Tensor GetOrEncode(IRetrieverExpert expert, string scope, string variant, IReadOnlyList<string> texts, EncodeRole role,
        Action<string>? progress = null, int chunk = DEFAULT_CHUNK)
    {
        ArgumentNullException.ThrowIfNull(expert);
        ArgumentNullException.ThrowIfNull(texts);
        var dir = Path.Combine(Folder, Sanitize(scope));
        Directory.CreateDirectory(dir);
        var name = Sanitize(expert.Descriptor.Name);
        var parts = new List<Tensor>();
        using var scope_ = NewDisposeScope();
        for (var start = 0; start < texts.Count; start += chunk)
        {
            var slice = texts.Skip(start).Take(chunk).ToList();
            var file = Path.Combine(dir, $"{name}-{role.ToString().ToLowerInvariant()}-{Hash(expert.Descriptor.Name, variant, role, slice)}.safetensors");
            if (File.Exists(file))
            {
                try
                {
                    var cached = SafeTensorsFile.Open(file).Load("embeddings");
                    if (cached.shape[0] == slice.Count)
                    {
                        parts.Add(cached);
                        continue;
                    }
                }
                catch (Exception e) when (e is IOException or FormatException or MoeGrains.Contracts.CheckpointException)
                {
                    progress?.Invoke($"ignoring unreadable cache file {file}: {e.Message}");
                }
            }
            progress?.Invoke($"{scope}: encoding {role.ToString().ToLowerInvariant()}s {start + 1}-{start + slice.Count} of {texts.Count} with {expert.Descriptor.Name}");
            var encoded = expert.Encode(slice, role).to(ScalarType.Float32, CPU).contiguous();
            var temp = file + $".{Environment.ProcessId}.tmp";
            SafeTensorsFile.Write(temp, [new KeyValuePair<string, Tensor>("embeddings", encoded)],
                new Dictionary<string, string> { ["expert"] = expert.Descriptor.Name, ["variant"] = variant, ["role"] = role.ToString(), ["count"] = slice.Count.ToString(System.Globalization.CultureInfo.InvariantCulture) });
            File.Move(temp, file, overwrite: true);
            parts.Add(encoded);
        }
        if (parts.Count == 0)
        {
            return zeros(0, Math.Max(expert.Descriptor.OutputDim, 1)).MoveToOuterDisposeScope();
        }
        return cat(parts, 0).MoveToOuterDisposeScope();
    }

    private static string Hash(string expert, string variant, EncodeRole role, IReadOnlyList<string> texts)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(Encoding.UTF8.GetBytes($"{expert}\u0001{variant}\u0001{role}\u0001{texts.Count}\u0001"));
        foreach (var t in texts)
        {
            sha.AppendData(Encoding.UTF8.GetBytes(t));
            sha.AppendData([0]);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset())[..20];
    }

    private static string Sanitize(string name) => string.Concat(name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_'));
}
