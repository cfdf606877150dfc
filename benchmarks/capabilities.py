"""The capabilities around sampling, each timed beside the call it builds on, on each backend.

Run: python benchmarks/capabilities.py [--batch 64] [--vocab 128256] [--repeat 7] [--only logprobs]

Each row times one capability and its baseline on the same realistic float32 logits
(`harness.realistic_logits`), alternately call by call (`harness.time_calls` with ``paired``), and
reports both medians and their ratio:

- ``verify_draft`` (K = 4, a sampled draft) against ``probs`` on the same ``(B * (K + 1), V)``
  logits, temperature 0.8, top-k 50, top-p 0.9 (goal: at most 2x);
- ``logprobs`` (top_n = 20, each kind) against ``probs`` with the same parameters (goal: 2x);
- ``sample`` with a ``Seed`` key against ``sample`` with an int / ``jax.random`` key, with the
  same parameters, and with temperature alone (the NumPy backend's untruncated rows pay a
  whole-row exponential to draw in token order);
- ``sample`` with logit shaping (a dense bias, a packed banned mask, repetition, frequency and
  presence penalties over a history of ``HISTORY`` tokens per row) and top-p 0.9, against
  ``sample`` with top-p 0.9 alone: one decode step (goal: at most 1.5x); the same with DRY
  (multiplier 0.8, base 1.75, allowed length 2) over a random history and a looping one;
- ``sample`` with each truncation step after min-p alone (typical-p, epsilon, eta, top-n-sigma,
  XTC, at the values of `STRATEGIES`) and `mirostat` (tau 5, state 10 bits) against ``sample``
  with top-p 0.9 alone;
- ``sample`` with a chain (llama.cpp's order, and Hugging Face's, which is the default order)
  against ``sample`` with the same values as keywords (`CHAIN`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

import agnostic_sampling as smp

import harness

SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}
K = 4
HISTORY = 2048
NUCLEUS = {"top_p": 0.9}
# each step alone, at a value its authors suggest (typical-p and epsilon / eta: Hugging Face's docs)
STRATEGIES = {"typical_p 0.9": {"typical_p": 0.9}, "epsilon 3e-4": {"epsilon": 3e-4},
              "eta 1e-3": {"eta": 1e-3}, "top_n_sigma 1": {"top_n_sigma": 1.0},
              "xtc 0.1 / 0.5": {"xtc_threshold": 0.1, "xtc_probability": 0.5}}
CHAIN = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}  # llama.cpp's defaults
PRESETS = {"llama_cpp": smp.presets.llama_cpp, "hf": smp.presets.hf}


def _shaping(batch: int, vocab: int) -> dict[str, np.ndarray | float]:
    """A decode step's shaping inputs: bias, packed banned mask, penalties over a full history."""
    rng = np.random.default_rng(2)
    banned = rng.random((batch, vocab)) < 0.01
    words = np.packbits(np.pad(banned, ((0, 0), (0, -vocab % 32))), axis=-1, bitorder="little")
    return {"logit_bias": rng.normal(0, 0.1, (batch, vocab)).astype(np.float32),
            "banned": words.view(np.uint32),
            "history": rng.integers(0, vocab, (batch, HISTORY)),
            "repetition_penalty": 1.1, "frequency_penalty": 0.2, "presence_penalty": 0.1}


def _dry(batch: int, vocab: int) -> dict[str, dict[str, Any]]:
    """DRY over a history of ``HISTORY`` tokens: random ids, and a row stuck in a loop (its last
    256 tokens one 32-token phrase over and over: matches up to 224 tokens long)."""
    rng = np.random.default_rng(4)
    random_ids = rng.integers(0, vocab, (batch, HISTORY))
    looping = random_ids.copy()
    looping[:, -256:] = np.tile(looping[:, -288:-256], 8)
    dry = smp.Dry(0.8, base=1.75, allowed_length=2)
    return {"random history": {"history": random_ids, "dry": dry},
            "looping history": {"history": looping, "dry": dry}}


def _dry_rows(step: np.ndarray, batch: int, vocab: int) -> list[tuple[str, str, Callable[[], Any],
                                                                       Callable[[], Any]]]:
    """DRY + top-p against top-p alone, on each backend (the JAX history int32, as a loop holds it)."""
    out = []
    for name, kw in _dry(batch, vocab).items():
        out.append((f"sample: dry ({name}) + top-p / top-p", "numpy",
                    lambda kw=kw: smp.sample(0, step, **kw, **NUCLEUS),
                    lambda: smp.sample(0, step, **NUCLEUS)))
    if harness.installed("jax"):
        import jax
        import jax.numpy as jnp

        key, step_j = jax.random.key(0), jnp.asarray(step)
        for name, kw in _dry(batch, vocab).items():
            kw_j = {"history": jnp.asarray(kw["history"], jnp.int32), "dry": kw["dry"]}
            out.append((f"sample: dry ({name}) + top-p / top-p", "jax (jit)",
                        lambda kw_j=kw_j: jax.block_until_ready(smp.sample(key, step_j, **kw_j, **NUCLEUS)),
                        lambda: jax.block_until_ready(smp.sample(key, step_j, **NUCLEUS))))
    return out


def _draft(batch: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """A draft's ids and probabilities: the draft model is the target at a higher temperature."""
    logits = harness.realistic_logits(batch * K, vocab, seed=1).reshape(batch, K, vocab)
    q = np.asarray(smp.probs(logits, temperature=1.3), np.float32)
    ids = np.asarray(smp.sample(0, logits, temperature=1.3))
    return ids, q


def rows(batch: int, vocab: int) -> list[tuple[str, str, Callable[[], Any], Callable[[], Any]]]:
    """(capability, backend, run, baseline) for every row this machine can run."""
    target = harness.realistic_logits(batch * (K + 1), vocab).reshape(batch, K + 1, vocab)
    ids, q = _draft(batch, vocab)
    flat = target.reshape(-1, vocab)
    logits = harness.realistic_logits(batch, vocab, seed=2)
    tokens = np.asarray(smp.sample(0, logits, **SAMPLING))
    seed = smp.Seed(np.arange(batch), 0)
    step = harness.realistic_logits(batch, vocab, seed=3)
    shaping = _shaping(batch, vocab)
    out = [("verify_draft K=4 / probs", "numpy",
            lambda: smp.verify_draft(0, target, ids, q, **SAMPLING),
            lambda: smp.probs(flat, **SAMPLING))]
    for kind in ("processed", "raw"):
        out.append((f"logprobs {kind} top_n=20 / probs", "numpy",
                    lambda kind=kind: smp.logprobs(logits, tokens, kind=kind, top_n=20, **SAMPLING),
                    lambda: smp.probs(logits, **SAMPLING)))
    for name, kw in (("T 0.8 top-k 50 top-p 0.9", SAMPLING), ("T 0.8 alone", {"temperature": 0.8})):
        out.append((f"sample, Seed key / int key ({name})", "numpy",
                    lambda kw=kw: smp.sample(seed, logits, **kw), lambda kw=kw: smp.sample(0, logits, **kw)))
    out.append(("sample: shaping + top-p / top-p", "numpy",
                lambda: smp.sample(0, step, **shaping, **NUCLEUS),
                lambda: smp.sample(0, step, **NUCLEUS)))
    out += _dry_rows(step, batch, vocab)
    for name, kw in STRATEGIES.items():
        out.append((f"strategy: {name} / top-p", "numpy",
                    lambda kw=kw: smp.sample(0, step, **kw), lambda: smp.sample(0, step, **NUCLEUS)))
    out.append(("strategy: mirostat v2 tau 5 / top-p", "numpy",
                lambda: smp.mirostat(0, step, np.full(batch, 10.0), tau=5.0, eta=0.1),
                lambda: smp.sample(0, step, **NUCLEUS)))
    for name, preset in PRESETS.items():
        out.append((f"chain: {name} order / keywords", "numpy",
                    lambda preset=preset: smp.sample(0, step, params=preset(**CHAIN)),
                    lambda: smp.sample(0, step, **CHAIN)))
    if harness.installed("jax"):
        import jax
        import jax.numpy as jnp

        key = jax.random.key(0)
        target_j, ids_j, q_j, flat_j = (jnp.asarray(a) for a in (target, ids, q, flat))
        out.append(("verify_draft K=4 / probs", "jax (jit)",
                    lambda: jax.block_until_ready(smp.verify_draft(key, target_j, ids_j, q_j, **SAMPLING)),
                    lambda: jax.block_until_ready(smp.probs(flat_j, **SAMPLING))))
        logits_j, tokens_j = jnp.asarray(logits), jnp.asarray(tokens)
        for kind in ("processed", "raw"):
            out.append((f"logprobs {kind} top_n=20 / probs", "jax (jit)",
                        lambda kind=kind: jax.block_until_ready(
                            smp.logprobs(logits_j, tokens_j, kind=kind, top_n=20, **SAMPLING)),
                        lambda: jax.block_until_ready(smp.probs(logits_j, **SAMPLING))))
        for name, kw in (("T 0.8 top-k 50 top-p 0.9", SAMPLING), ("T 0.8 alone", {"temperature": 0.8})):
            out.append((f"sample, Seed key / jax key ({name})", "jax (jit)",
                        lambda kw=kw: jax.block_until_ready(smp.sample(seed, logits_j, **kw)),
                        lambda kw=kw: jax.block_until_ready(smp.sample(key, logits_j, **kw))))
        step_j = jnp.asarray(step)
        # traced inputs, as a decode loop would hold them (int32 history: JAX's default integer)
        shaping_j = {name: jnp.asarray(value, jnp.int32 if name == "history" else None)
                     for name, value in shaping.items()}
        out.append(("sample: shaping + top-p / top-p", "jax (jit)",
                    lambda: jax.block_until_ready(smp.sample(key, step_j, **shaping_j, **NUCLEUS)),
                    lambda: jax.block_until_ready(smp.sample(key, step_j, **NUCLEUS))))
        for name, kw in STRATEGIES.items():
            out.append((f"strategy: {name} / top-p", "jax (jit)",
                        lambda kw=kw: jax.block_until_ready(smp.sample(key, step_j, **kw)),
                        lambda: jax.block_until_ready(smp.sample(key, step_j, **NUCLEUS))))
        mu_j = jnp.full(batch, 10.0)
        out.append(("strategy: mirostat v2 tau 5 / top-p", "jax (jit)",
                    lambda: jax.block_until_ready(smp.mirostat(key, step_j, mu_j, tau=5.0, eta=0.1)),
                    lambda: jax.block_until_ready(smp.sample(key, step_j, **NUCLEUS))))
        for name, preset in PRESETS.items():
            out.append((f"chain: {name} order / keywords", "jax (jit)",
                        lambda preset=preset: jax.block_until_ready(
                            smp.sample(key, step_j, params=preset(**CHAIN))),
                        lambda: jax.block_until_ready(smp.sample(key, step_j, **CHAIN))))
    return out


def main(argv: list[str] | None = None) -> int:
    """Time every row and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", default="", help="time only the rows whose capability starts with this")
    args = parser.parse_args(argv)
    print(harness.machine_line())
    print(f"\nbatch {args.batch} x vocab {args.vocab}, medians of {args.repeat} paired calls\n")
    print("| capability / baseline | backend | capability (ms) | baseline (ms) | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, backend, run, baseline in rows(args.batch, args.vocab):
        if not name.startswith(args.only):
            continue
        timing = harness.time_calls(run, repeat=args.repeat, paired=baseline)
        ratio = timing.median_ms / timing.paired_median_ms
        print(f"| {name} | {backend} | {timing.median_ms:.1f} | {timing.paired_median_ms:.1f} "
              f"| {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
