"""Speculative decoding with two character bigram models: a cheap draft, an exact verifier.

Run: python examples/speculative_decode.py   (a few seconds; NumPy and SciPy)

Both models count character pairs in the same paragraph; the draft smooths its counts heavily
(a flatter, worse model), the target lightly. Each round the draft proposes K = 4 characters,
the target scores all of them in one call, and `smp.verify_draft` keeps a prefix and adds one
token of its own. The tokens then follow the target exactly: the script checks the first
generated character of 20,000 rows against the target's distribution with a chi-square test, and
the acceptance rate against its prediction ``1 - TV(p, q)``.
"""

import numpy as np

import agnostic_sampling as smp
from agnostic_sampling.stats import chisquare_gof

TEXT = (
    "the cat sat on the mat. the dog sat on the log. a bird sang in the tree and the cat "
    "watched the bird. the sun rose over the hill and the fields turned gold. she read the "
    "letter twice, then folded it and put it in the drawer. he walked to the station in the "
    "rain. the train was late, so they talked about the weather and the harvest. "
)
CHARS = sorted(set(TEXT))
STOI = {c: i for i, c in enumerate(CHARS)}
V = len(CHARS)
ids = np.array([STOI[c] for c in TEXT])
counts = np.zeros((V, V))
np.add.at(counts, (ids[:-1], ids[1:]), 1)
TARGET = np.log((counts + 0.01) / (counts + 0.01).sum(-1, keepdims=True)).astype(np.float32)
DRAFT = np.log((counts + 1.0) / (counts + 1.0).sum(-1, keepdims=True)).astype(np.float32)
K, TEMPERATURE, TOP_P = 4, 0.8, 0.95


def speculative_round(rng: np.random.Generator, last: np.ndarray) -> smp.DraftVerification:
    """One round for a batch whose last characters are ``last``: K drafts, one target call."""
    draft_ids, draft_probs, context = [], [], last
    for _ in range(K):
        q = smp.probs(DRAFT[context], temperature=TEMPERATURE)  # the draft's processed distribution
        context = smp.sample(rng, DRAFT[context], temperature=TEMPERATURE)
        draft_ids.append(context)
        draft_probs.append(q)
    draft_ids = np.stack(draft_ids, axis=1)
    # The target's logits after the last character and after each drafted prefix: (B, K + 1, V).
    target_logits = TARGET[np.concatenate([last[:, None], draft_ids], axis=1)]
    return smp.verify_draft(rng, target_logits, draft_ids, np.stack(draft_probs, axis=1),
                            temperature=TEMPERATURE, top_p=TOP_P)


def main() -> None:
    rng = np.random.default_rng(0)
    text, calls = [STOI["t"]], 0
    while len(text) < 80:
        out = speculative_round(rng, np.array(text[-1:]))
        text += out.tokens[0, : out.num_emitted[0]].tolist()
        calls += 1
    print("generated:", repr("".join(CHARS[i] for i in text[:80])))
    made = len(text) - 1
    print(f"{made} characters in {calls} target calls: {made / calls:.2f} per call (K = {K})")

    rows = 20_000
    out = speculative_round(rng, np.full(rows, STOI["t"]))
    p = smp.probs(TARGET[STOI["t"]], temperature=TEMPERATURE, top_p=TOP_P).astype(np.float64)
    q = smp.probs(DRAFT[STOI["t"]], temperature=TEMPERATURE).astype(np.float64)
    test = chisquare_gof(out.tokens[:, 0], p / p.sum())
    print(f"first character after 't', {rows} rows: chi-square p-value {test.pvalue:.3f}, "
          f"{test.out_of_support} outside the target's kept set")
    print(f"first draft accepted {np.mean(out.num_accepted > 0):.3f} of the time; "
          f"predicted 1 - TV(p, q) = {np.minimum(p, q).sum():.3f}")


if __name__ == "__main__":
    main()
