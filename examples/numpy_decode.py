"""Decode a NumPy model with every sampling strategy: a character trigram counted from a paragraph.

Run: python examples/numpy_decode.py   (a second or two; NumPy only)

The model is any function from ids ``(B, t)`` to logits ``(B, t, V)``; here it looks up the
log-frequency of the character that follows each pair of characters, so it never needs more
than the last two (``context_size=2``). Prompts of different lengths go in one right-padded
batch with their lengths; each row stops at its own '.' (the EOS id).
"""

import numpy as np

import agnostic_sampling as smp

TEXT = (
    "the cat sat on the mat. the dog sat on the log. a bird sang in the tree and the cat "
    "watched the bird. the sun rose over the hill and the fields turned gold. she read the "
    "letter twice, then folded it and put it in the drawer. he walked to the station in the "
    "rain. the train was late, so they talked about the weather and the harvest. "
)
CHARS = sorted(set(TEXT))
STOI = {c: i for i, c in enumerate(CHARS)}
V, EOS = len(CHARS), STOI["."]

ids = np.array([STOI[c] for c in TEXT])
counts = np.full((V, V, V), 0.01)  # a little smoothing: every successor stays possible
np.add.at(counts, (ids[:-2], ids[1:-1], ids[2:]), 1)
LOG_PROBS = np.log(counts / counts.sum(axis=-1, keepdims=True)).astype(np.float32)


def model(tokens: np.ndarray) -> np.ndarray:
    """(B, t) ids -> (B, t, V) logits: at each position, the log-frequencies of what follows the
    pair (previous character, this character); a space stands before the first."""
    previous = np.concatenate([np.full_like(tokens[:, :1], STOI[" "]), tokens[:, :-1]], axis=1)
    return LOG_PROBS[previous, tokens]


def encode(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and per-row lengths."""
    lengths = np.array([len(p) for p in prompts])
    batch = np.zeros((len(prompts), lengths.max()), np.int64)
    for row, text in enumerate(prompts):
        batch[row, : len(text)] = [STOI[c] for c in text]
    return batch, lengths


def show(result: smp.GenerateResult, lengths: np.ndarray) -> list[str]:
    ends = lengths + result.num_generated
    return ["".join(CHARS[i] for i in row[:end]) for row, end in zip(result.ids, ends, strict=True)]


prompts, lengths = encode(["the ", "she rea", "a bird "])
strategies = {
    "greedy": dict(temperature=0.0),
    "temperature 0.8": dict(temperature=0.8),
    "top-k 3": dict(top_k=3),
    "top-p 0.7": dict(top_p=0.7),
    "min-p 0.2": dict(min_p=0.2),
}
for name, keywords in strategies.items():
    result = smp.generate(0, model, prompts, prompt_lengths=lengths, max_new_tokens=40, eos_id=EOS,
                          context_size=2, **keywords)
    print(f"{name:>16}: {show(result, lengths)}")

# One batch, one strategy per row, with each token's log-probability and a seeded Generator.
params = smp.SamplingParams(temperature=np.array([0.0, 1.0, 0.7]), top_p=np.array([1.0, 0.9, 1.0]),
                            top_k=np.array([0, 0, 4]))
result = smp.generate(np.random.default_rng(42), model, prompts, prompt_lengths=lengths, max_new_tokens=40,
                      context_size=2, eos_id=EOS, params=params, return_logprobs=True)
for text, logprob in zip(show(result, lengths), result.logprobs.sum(axis=1), strict=True):
    print(f"{'per-row':>16}: {text!r} (log-probability of the continuation {logprob:.2f})")
print(f"model calls: {result.model_calls}, tokens generated per row: {result.num_generated.tolist()}")
