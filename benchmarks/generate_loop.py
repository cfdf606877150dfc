"""Overhead of the decode loop: `generate_with_state` with a step that only looks up logits, against
the same `smp.sample` calls in bare loops (NumPy: a Python loop; JAX: a Python loop of a jitted
`sample`, and a `lax.fori_loop` of it).

Defaults: B=8, V=50257, top_k=50, top_p=0.9, temperature=0.8, a prompt of 4 and 64 new tokens
(67 positions). Each figure is milliseconds per position, the best of ``--repeats`` calls after a
warm-up call (`harness.time_calls`): the best, not the median, since the loop's overhead is what
is measured and a loaded machine only adds to it.

    python benchmarks/generate_loop.py [--batch 8] [--vocab 50257] [--new-tokens 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

import agnostic_sampling as smp

import harness

PROMPT = 4
SAMPLING = {"top_k": 50, "top_p": 0.9, "temperature": 0.8}


def best_ms_per_position(run: Callable[[], Any], positions: int, repeats: int) -> float:
    """The fastest of ``repeats`` calls after a warm-up call, divided by the positions."""
    return min(harness.time_calls(run, repeat=repeats, warmup=1).times_ms) / positions


def numpy_cases(table: np.ndarray, prompt: np.ndarray, new_tokens: int) -> dict[str, Callable[[], Any]]:
    """The NumPy loop and a bare loop of `smp.sample` over the same positions."""
    positions = prompt.shape[1] + new_tokens - 1
    rows = table.shape[0]

    def bare() -> None:
        rng, ids = np.random.default_rng(0), prompt[:, -1]
        for _ in range(positions):
            ids = smp.sample(rng, table[ids % rows], **SAMPLING)

    def generate() -> None:
        smp.generate_with_state(0, lambda state, ids: (table[ids % rows], state), None, prompt,
                                max_new_tokens=new_tokens, **SAMPLING)

    return {"generate_with_state": generate, "bare loop of sample": bare}


def jax_cases(table: np.ndarray, prompt: np.ndarray, new_tokens: int) -> dict[str, Callable[[], Any]]:
    """The JAX while_loop, a Python loop of a jitted `sample`, and a `lax.fori_loop` of it."""
    import jax
    import jax.numpy as jnp

    positions = prompt.shape[1] + new_tokens - 1
    batch, rows = prompt.shape[0], table.shape[0]
    weights, ids0, key = jnp.asarray(table), jnp.asarray(prompt), jax.random.key(0)
    params = smp.SamplingParams(temperature=jnp.full(batch, 0.8), top_k=jnp.full(batch, 50, jnp.int32),
                                top_p=jnp.full(batch, 0.9))

    @jax.jit
    def fori(key: Any, ids: Any, p: Any) -> Any:
        def body(i: Any, ids: Any) -> Any:
            return smp.sample(jax.random.fold_in(key, i), weights[ids % rows], params=p)

        return jax.lax.fori_loop(0, positions, body, ids)

    one = jax.jit(lambda k, ids, p: smp.sample(k, weights[ids % rows], params=p))

    def python_loop() -> None:
        ids = ids0[:, -1]
        for i in range(positions):
            ids = one(jax.random.fold_in(key, i), ids, params)
        ids.block_until_ready()

    def step(state: Any, ids: Any) -> Any:
        return weights[ids % rows], state

    def generate() -> None:
        smp.generate_with_state(key, step, jnp.int32(0), ids0, max_new_tokens=new_tokens,
                                params=params).ids.block_until_ready()

    return {"generate_with_state": generate,
            "lax.fori_loop of sample": lambda: fori(key, ids0[:, -1], params).block_until_ready(),
            "Python loop of jitted sample": python_loop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-jax", action="store_true", help="the NumPy loop only")
    args = parser.parse_args(argv)

    table = np.random.default_rng(0).normal(0, 2, (256, args.vocab)).astype(np.float32)
    prompt = np.random.default_rng(1).integers(0, 256, (args.batch, PROMPT))
    positions = PROMPT + args.new_tokens - 1
    print(f"B={args.batch}, V={args.vocab}, {positions} positions, {SAMPLING}; ms per position, "
          f"best of {args.repeats}\n{harness.machine_line()}")
    backends = {"numpy": numpy_cases}
    if not args.no_jax and harness.installed("jax"):
        backends["jax"] = jax_cases
    for backend, cases in backends.items():
        for name, run in cases(table, prompt, args.new_tokens).items():
            print(f"{backend}: {name} {best_ms_per_position(run, positions, args.repeats):.2f} ms/position",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
