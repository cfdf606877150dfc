"""The JAX backend against the samplers JAX codebases copy today, in one run, on one machine.

Compared, each jitted, on a batch of float32 logits (default 64 x 128256, Llama 3's vocabulary):

- ``agnostic``: ``smp.sample`` with every parameter a traced argument (no recompile per value);
- ``sort``: the full-sort pipeline (``jnp.sort``, softmax, ``cumsum``, mask, then
  ``jax.random.categorical`` over the whole vocabulary);
- ``lax.top_k``: ``lax.top_k`` with a static ``k`` (one compile per k), top-p on the k
  candidates, ``jax.random.categorical`` over them;
- greedy: ``smp.greedy`` against ``jnp.max`` (a lower bound) and ``jnp.argmax``.

Each time is the median of ``--repeats`` calls after a warm-up call, with ``block_until_ready``
(`harness.time_calls`). The sort-based peers are `harness.sort_top_p` and `harness.static_top_k`.

    python benchmarks/jax_vs_peers.py [--batch 64] [--vocab 128256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import agnostic_sampling as smp

import harness


def ours(key: jax.Array, logits: jax.Array, params: smp.SamplingParams) -> jax.Array:
    return smp.sample(key, logits, params=params)


def median_ms(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median of ``repeats`` calls after one warm-up call (the compile), with block_until_ready."""
    return harness.time_calls(lambda: jax.block_until_ready(fn(*args)), repeat=repeats, warmup=1).median_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sort-repeats", type=int, default=3, help="repeats for the (slow) sort-based runs")
    args = parser.parse_args(argv)

    # A worst case for top-p, not harness.realistic_logits: every row's 0.9-nucleus holds about
    # 24,000 tokens at vocabulary 128256.
    logits = jnp.asarray(harness.flat_logits(args.batch, args.vocab))
    key = jax.random.key(0)
    f32 = jnp.float32
    full = smp.SamplingParams(temperature=f32(0.8), top_k=jnp.int32(50), top_p=f32(0.9))
    nucleus = smp.SamplingParams(temperature=f32(1.0), top_p=f32(0.9))

    ours_jit = jax.jit(ours)

    def row(name: str, fn: Callable[..., Any], *fn_args: Any, repeats: int | None = None) -> float:
        ms = median_ms(fn, *fn_args, repeats=repeats or args.repeats)
        print(f"  {name:<48} {ms:10.2f} ms", flush=True)
        return ms

    print(f"batch {args.batch} x vocab {args.vocab} float32 on {jax.devices()[0]}; median of {args.repeats} "
          f"after warm-up\n{harness.machine_line()}")
    print("temperature 0.8, top-k 50, top-p 0.9:")
    a = row("agnostic smp.sample (traced params)", ours_jit, key, logits, full)
    b = row("lax.top_k static k=50 + top-p on 50",
            jax.jit(lambda k, x: harness.static_top_k(k, x, 0.8, 0.9, k=50)), key, logits)
    c = row("sort-based (jnp.sort + cumsum + categorical)",
            jax.jit(lambda k, x: harness.sort_top_p(k, x, 0.8, 0.9, top_k=50)), key, logits,
            repeats=args.sort_repeats)
    print(f"  ratio agnostic / lax.top_k = {a / b:.2f}x; sort-based / agnostic = {c / a:.1f}x")

    print("top-p 0.9 alone:")
    d = row("agnostic smp.sample (traced params)", ours_jit, key, logits, nucleus)
    e = row("sort-based (jnp.sort + cumsum + categorical)",
            jax.jit(lambda k, x: harness.sort_top_p(k, x, 1.0, 0.9)), key, logits, repeats=args.sort_repeats)
    print(f"  ratio sort-based / agnostic = {e / d:.1f}x")

    print("greedy:")
    f = row("agnostic smp.greedy", jax.jit(smp.greedy), logits)
    g = row("jnp.max (a lower bound: no index)", jax.jit(lambda x: jnp.max(x, axis=-1)), logits)
    h = row("jnp.argmax", jax.jit(lambda x: jnp.argmax(x, axis=-1)), logits)
    print(f"  ratio agnostic / jnp.max = {f / g:.2f}x; jnp.argmax / agnostic = {h / f:.2f}x")

    print("parts of the agnostic pipeline:")
    row("probs only (no draw), temp+top-k+top-p", jax.jit(lambda x, p: smp.probs(x, params=p)), logits, full)
    row("probs only (no draw), top-p alone", jax.jit(lambda x, p: smp.probs(x, params=p)), logits, nucleus)
    row("temperature only (draw over the full vocabulary)", ours_jit, key, logits,
        smp.SamplingParams(temperature=f32(0.8)))
    row("temperature only, process_logits (no draw)", jax.jit(lambda x, p: smp.process_logits(x, params=p)),
        logits, smp.SamplingParams(temperature=f32(0.8)))
    row("jax.random.gumbel noise for the batch (not used)",
        jax.jit(lambda k: jax.random.gumbel(k, logits.shape)), key)


if __name__ == "__main__":
    sys.exit(main())
