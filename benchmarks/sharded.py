"""Vocabulary-sharded sampling against gather-then-sample, on simulated CPU devices.

    python benchmarks/sharded.py                        # batch 64 x vocabulary 262144, 8 devices
    python benchmarks/sharded.py --batch 8 --vocab 32768 --sort    # also gather + sort

Every row is one jitted program, compiled once, on the same (B, V) float32 logits split over the
vocabulary axis of an 8-device mesh (``XLA_FLAGS=--xla_force_host_platform_device_count=8``,
set here before JAX starts unless ``XLA_FLAGS`` already names a device count):

- ``sharded``: `agnostic_sampling.sample` on the sharded logits; XLA keeps every step on the local
  shard and moves per-row scalars, plus, on the candidate route (from 8192 tokens), the block
  maxima (V / 32 floats per row, all-gathered) and the 2048 candidates per row (all-reduced).
- ``gather + sample``: all-gather the vocabulary onto every device, then the same `sample`.
- ``gather + sort`` (with ``--sort``): all-gather, then the usual sort / cumsum / categorical
  top-p sampler (`harness.sort_top_p`).
- ``1 device``: `sample` on unsharded logits, for scale.

Bytes come from the compiled program, not from a model of it: each collective's per-device
operand shape times its dtype size (`agnostic_sampling.testing.collectives`), divided by the
batch. A collective inside a ``while`` loop (one per bisection step) runs once per iteration; the
column "bytes/row" counts those at 32 iterations, the most a float32 bisection can take, so it is
an upper bound. "received/device/row" converts operand bytes to what one device receives with the
usual algorithms: an all-gather over n devices brings (n - 1) operands, a ring all-reduce
2 (n - 1) / n of one.

Times: simulated devices share the host's cores, so a time here is the *total* work of all
devices plus the cost of the collectives, not the latency of 8 real accelerators working in
parallel: gathering makes every device repeat the whole batch's work, which on real hardware
costs time per device rather than total.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    FLAGS = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{FLAGS} --xla_force_host_platform_device_count=8".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import agnostic_sampling as smp  # noqa: E402
from agnostic_sampling.testing import collectives  # noqa: E402

import harness  # noqa: E402

MAX_BISECTION_STEPS = 32  # float32 bit patterns: a bracket of < 2**31 halves in at most 31 steps


def programs(mesh: Mesh, top_p: float, temperature: float) -> dict[str, tuple[Any, bool]]:
    """name -> (jitted function of (key, logits), whether its input is vocabulary-sharded)."""
    replicated = NamedSharding(mesh, P())

    def sharded(key: Any, x: Any) -> Any:
        return smp.sample(key, x, top_p=top_p, temperature=temperature)

    def gather_sample(key: Any, x: Any) -> Any:
        return sharded(key, jax.lax.with_sharding_constraint(x, replicated))

    def gather_sort(key: Any, x: Any) -> Any:
        return harness.sort_top_p(key, jax.lax.with_sharding_constraint(x, replicated), temperature, top_p)

    return {"sharded": (jax.jit(sharded), True), "gather + sample": (jax.jit(gather_sample), True),
            "gather + sort": (jax.jit(gather_sort), True), "1 device": (jax.jit(sharded), False)}


def traffic(hlo_text: str, batch: int, devices: int) -> tuple[str, float, float]:
    """(collectives summary, operand bytes per row, bytes one device receives per row)."""
    found = collectives(hlo_text)
    operand = received = 0.0
    kinds: dict[str, int] = {}
    for c in found:
        runs = MAX_BISECTION_STEPS if c.in_loop else 1
        operand += c.operand_bytes * runs
        factor = devices - 1 if c.op == "all-gather" else 2 * (devices - 1) / devices
        received += c.operand_bytes * runs * factor
        label = f"{c.op} {'+'.join(c.shapes)}" + (" (loop)" if c.in_loop else "")
        kinds[label] = kinds.get(label, 0) + 1
    summary = ", ".join(f"{n} x {label}" for label, n in kinds.items()) or "none"
    return summary, operand / batch, received / batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--sort", action="store_true",
                        help="add the gather + sort row (minutes at the default size on 2 cores)")
    args = parser.parse_args(argv)
    if len(jax.devices()) < args.devices:
        sys.exit(f"need {args.devices} devices, JAX sees {len(jax.devices())}: "
                 "set XLA_FLAGS before JAX starts")

    mesh = Mesh(np.array(jax.devices()[:args.devices]), ("vocab",))
    logits = harness.realistic_logits(args.batch, args.vocab)
    inputs = {True: jax.device_put(logits, NamedSharding(mesh, P(None, "vocab"))),
              False: jax.device_put(logits, jax.devices()[0])}
    key = jax.random.key(0)
    print(f"batch {args.batch} x vocabulary {args.vocab}, float32, vocabulary over {args.devices} simulated "
          f"CPU devices; top_p={args.top_p}, temperature={args.temperature}; median of {args.repeats}")
    print(harness.machine_line() + "\n")
    print("| program | time (ms) | bytes/row (HLO operands) | received/device/row | collectives |")
    print("| --- | ---: | ---: | ---: | --- |")
    reference = None
    for name, (fn, split) in programs(mesh, args.top_p, args.temperature).items():
        if name == "gather + sort" and not args.sort:
            continue
        x = inputs[split]
        compiled = fn.lower(key, x).compile()
        ids = np.asarray(compiled(key, x))  # warm-up, and the ids to compare
        timing = harness.time_calls(lambda c=compiled, x=x: jax.block_until_ready(c(key, x)),
                                    repeat=args.repeats, warmup=1)
        summary, operand, received = traffic(compiled.as_text(), args.batch, args.devices if split else 1)
        if name != "gather + sort":
            reference = ids if reference is None else reference
            assert np.array_equal(ids, reference), f"{name} drew different tokens with the same key"
        print(f"| {name} | {timing.median_ms:.1f} | {operand:,.0f} | {received:,.0f} | {summary} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
