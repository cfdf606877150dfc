"""Logit shaping inside the decode loop, per decode step, against the same loop without it.

`generate` with ``context_size=1`` and a model that costs nothing, batch 64 x vocabulary 128256, a
prompt of 2048 tokens per row (the history the penalties count) and 16 new tokens, top-p 0.9, on
each backend (JAX: the jitted loop). The model's logits at each position are the benchmark's
realistic rows rotated along the vocabulary by an amount set by the last token of row 0 (a
view on NumPy, one `lax.dynamic_slice` on JAX, in both loops alike): like a language model, it
predicts different tokens at different positions, so the tokens the penalties push down are
not always the ones it predicts next. ``--fixed-logits`` returns the same logits at every
position instead (the first version of this benchmark): then the frequency and presence
penalties push the same few top tokens down at every step, the distribution flattens, and the
shaped loop's top-p has nuclei of up to ~20,000 tokens to find where the plain loop has a few,
which measures the nucleus width rather than the shaping.

The shaped loop adds a dense bias (mostly zero), a packed banned mask and repetition, frequency and
presence penalties at their default scopes (counts carried by the loop). Each figure is the median
of ``--repeat`` calls after a warm-up call, divided by the 16 steps (so the one-time count of the
prompt is spread over them), and the ratio of the two (the issue's goal: at most 1.5x).

    python benchmarks/decode_shaping.py [--batch 64] [--vocab 128256] [--prompt 2048] [--repeat 5]
                                        [--fixed-logits]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import agnostic_sampling as smp

import harness

NEW = 16
NUCLEUS = {"top_p": 0.9}
ROTATION = 7919  # a prime: the rotation of the logits is the last token of row 0 times this


def shaping(batch: int, vocab: int) -> dict[str, Any]:
    """A dense bias (zero but for 100 tokens per row, as a client's bias usually is, so that the
    distribution top-p sees stays that of the plain loop), a packed banned mask (1% of tokens)
    and the three penalties."""
    rng = np.random.default_rng(3)
    bias = np.zeros((batch, vocab), np.float32)
    bias[np.arange(batch)[:, None], rng.integers(0, vocab, (batch, 100))] = rng.uniform(-5, 0, (batch, 100))
    banned = rng.random((batch, vocab)) < 0.01
    words = np.zeros((batch, -(-vocab // 32)), np.uint32)
    for bit in range(32):
        column = banned[:, bit::32]
        words[:, :column.shape[1]] |= column.astype(np.uint32) << np.uint32(bit)
    return dict(logit_bias=bias, banned=words, repetition_penalty=1.1, frequency_penalty=0.2,
                presence_penalty=0.1)


def cases(batch: int, vocab: int, prompt_width: int, fixed: bool = False) -> list[tuple[str, Any, Any]]:
    """(backend, the loop without shaping, the loop with it) for each installed backend."""
    logits = harness.realistic_logits(batch, vocab)
    doubled = np.concatenate([logits, logits], axis=1)  # a rotation by s is the view [:, s : s + V]
    prompt = np.random.default_rng(4).integers(0, vocab, (batch, prompt_width))
    extra = shaping(batch, vocab)
    common = dict(max_new_tokens=NEW, context_size=1, **NUCLEUS)

    def numpy_model(ids: Any) -> Any:
        shift = 0 if fixed else int(ids[0, -1]) * ROTATION % vocab
        return np.broadcast_to(doubled[:, None, shift:shift + vocab], (batch, ids.shape[1], vocab))

    out = [("numpy", lambda: smp.generate(0, numpy_model, prompt, **common),
            lambda: smp.generate(0, numpy_model, prompt, **common, **extra))]
    if harness.installed("jax"):
        import jax
        import jax.numpy as jnp
        from jax import lax

        doubled_j = jnp.asarray(doubled)
        prompt_j = jnp.asarray(prompt, jnp.int32)
        extra_j = {name: jnp.asarray(value) if isinstance(value, np.ndarray) else value
                   for name, value in extra.items()}

        def jax_model(ids: Any) -> Any:
            shift = 0 if fixed else ids[0, -1] * ROTATION % vocab
            rows = lax.dynamic_slice_in_dim(doubled_j, shift, vocab, axis=1)
            return jnp.broadcast_to(rows[:, None, :], (batch, ids.shape[1], vocab))

        out.append(("jax (jit)",
                    lambda: jax.block_until_ready(smp.generate(jax.random.key(0), jax_model, prompt_j,
                                                               **common).ids),
                    lambda: jax.block_until_ready(smp.generate(jax.random.key(0), jax_model, prompt_j,
                                                               **common, **extra_j).ids)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--prompt", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fixed-logits", action="store_true",
                        help="the same logits at every position (the distribution flattens)")
    args = parser.parse_args(argv)
    print(harness.machine_line())
    logits = "fixed" if args.fixed_logits else "rotated"
    print(f"\nbatch {args.batch} x vocab {args.vocab}, prompt {args.prompt}, {NEW} new tokens, top-p 0.9; "
          f"{logits} logits; ms per decode step, median of {args.repeat}\n")
    print("| backend | top-p alone | bias + mask + penalties + top-p | ratio |")
    print("|---|---:|---:|---:|")
    for backend, plain, shaped in cases(args.batch, args.vocab, args.prompt, args.fixed_logits):
        timing = harness.time_calls(shaped, repeat=args.repeat, warmup=1, paired=plain)
        shaped_ms, plain_ms = timing.median_ms / NEW, timing.paired_median_ms / NEW
        print(f"| {backend} | {plain_ms:.1f} | {shaped_ms:.1f} | {shaped_ms / plain_ms:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
