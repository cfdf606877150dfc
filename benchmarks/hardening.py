"""The speed goals of the hardening issue, measured: layouts, all-greedy calls, compile time.

- NumPy: `sample` (temperature 0.8, top-k 50, top-p 0.9) on logits in other layouts (a
  broadcast row, a `[:, -1]` slice of a (B, 2, V) array, a transpose, Fortran order) against the
  same logits in C order (goal: at most ~1.5x); top-p alone and temperature 0 or 1 on the
  column-major layouts too; at batch 256 and 16.
- Both backends: `sample` with ``temperature=0`` on every row against `greedy`, at batch 1 and
  64 (goal: as cheap as `greedy`).
- JAX: the first call (trace and compile) of a jitted `sample` and `probs` with every sampling
  field traced (goal: at most 2 s): the first in the process, then at new batch shapes (what a
  serving loop meets), split into trace and lowering, XLA's compile and the run.
- NumPy: `sample` with top-p 0.9 alone, on `harness.realistic_logits` and on `harness.flat_logits`
  (every nucleus ~24,000 tokens), against one `np.max` pass (goal: within 10x), with the peak
  memory it allocates beyond the logits (goal: at most 1x the logits) at batch 1, 64 and 256.
  (JAX's top-p alone against a sort-based sampler: `jax_vs_peers.py`.)

    python benchmarks/hardening.py [--vocab 128256] [--repeat 7] [--only layouts]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

import agnostic_sampling as smp

import harness

SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}


def layouts(vocab: int, repeat: int) -> None:
    for batch in (256, 16):
        _layouts(batch, vocab, repeat)


def _layouts(batch: int, vocab: int, repeat: int) -> None:
    base = harness.realistic_logits(batch, vocab)
    wide = np.repeat(base[:, None, :], 2, axis=1)
    cases = {
        "broadcast row": np.broadcast_to(base[0], (batch, vocab)),
        "[:, -1] slice": wide[:, -1],
        "transpose": np.ascontiguousarray(base.T).T,
        "Fortran order": np.asfortranarray(base),
    }
    print(f"\nNumPy layouts, batch {batch} x vocab {vocab}, medians of {repeat}; paired with a C-order copy")
    column_major = ("transpose", "Fortran order")
    settings = {"T 0.8 + top-k 50 + top-p 0.9": SAMPLING, "top-p 0.9": {"top_p": 0.9},
                "temperature 1": {}, "temperature 0": {"temperature": 0.0}}
    for label, setting in settings.items():
        print(f"  {label}")
        for name, array in cases.items():
            if setting is not SAMPLING and name not in column_major:
                continue
            contiguous = np.ascontiguousarray(array)
            timing = harness.time_calls(lambda a=array, s=setting: smp.sample(0, a, **s), repeat=repeat,
                                        paired=lambda c=contiguous, s=setting: smp.sample(0, c, **s))
            print(f"    {name:14s} {timing.median_ms:8.1f} ms   C order {timing.paired_median_ms:8.1f} ms   "
                  f"{timing.median_ms / timing.paired_median_ms:.2f}x")


def all_greedy(vocab: int, repeat: int) -> None:
    print(f"\nsample(temperature=0) on every row against greedy, vocab {vocab}, medians of {repeat}")
    for batch in (1, 64):
        x = harness.realistic_logits(batch, vocab)
        timing = harness.time_calls(lambda x=x: smp.sample(0, x, temperature=0.0), repeat=repeat,
                                    paired=lambda x=x: smp.greedy(x))
        print(f"  numpy  batch {batch:3d}: {timing.median_ms:7.2f} ms vs {timing.paired_median_ms:7.2f} ms "
              f"({timing.median_ms / timing.paired_median_ms:.2f}x)")
        if harness.installed("jax"):
            _jax_all_greedy(x, repeat)


def _jax_all_greedy(x: np.ndarray, repeat: int) -> None:
    import jax
    import jax.numpy as jnp

    batch = x.shape[0]
    xj = jnp.asarray(x)
    draw = jax.jit(lambda k, x, p: smp.sample(k, x, params=p))
    params = smp.SamplingParams(temperature=jnp.zeros(batch))
    pick = jax.jit(smp.greedy)
    key = jax.random.key(0)
    timing = harness.time_calls(lambda: jax.block_until_ready(draw(key, xj, params)), repeat=repeat,
                                paired=lambda: jax.block_until_ready(pick(xj)))
    print(f"  jax    batch {batch:3d}: {timing.median_ms:7.2f} ms vs {timing.paired_median_ms:7.2f} ms "
          f"({timing.median_ms / timing.paired_median_ms:.2f}x)  (jitted, temperature traced)")


def compile_time(vocab: int, shapes: int = 3) -> None:
    """The first call of a jitted `sample` and `probs`: in a fresh process, then at new batch shapes.

    The first compile in a process also pays XLA's own start-up; a serving loop that meets a new
    batch shape pays only the trace, lowering and compile of that shape, measured apart on
    ``shapes`` new shapes (medians).
    """
    if not harness.installed("jax"):
        return
    import jax
    import jax.numpy as jnp

    def params(batch: int) -> smp.SamplingParams:
        return smp.SamplingParams(temperature=jnp.full(batch, 0.8), top_k=jnp.full(batch, 50),
                                  top_p=jnp.full(batch, 0.9), min_p=jnp.full(batch, 0.05),
                                  min_keep=jnp.ones(batch, jnp.int32))

    batch = 64
    print(f"\nJAX first call (trace + compile + run) with every field traced, vocab {vocab}")
    for name, fn in (("sample", lambda p, x: smp.sample(jax.random.key(0), x, params=p)),
                     ("probs", lambda p, x: smp.probs(x, params=p))):
        jitted = jax.jit(fn)
        x = jnp.asarray(harness.realistic_logits(batch, vocab))
        start = time.perf_counter()
        jax.block_until_ready(jitted(params(batch), x))
        first = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(jitted(params(batch), x))
        second = 1e3 * (time.perf_counter() - start)
        lowering, compiling, running = [], [], []
        for new in range(batch + 1, batch + 1 + shapes):  # shapes this process has not compiled
            p, x = params(new), jnp.asarray(harness.realistic_logits(new, vocab))
            start = time.perf_counter()
            lowered = jitted.lower(p, x)
            lowering.append(time.perf_counter() - start)
            start = time.perf_counter()
            compiled = lowered.compile()
            compiling.append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(compiled(p, x))
            running.append(time.perf_counter() - start)
        calls = np.add(np.add(lowering, compiling), running)
        print(f"  {name:6s} batch {batch}: first call in the process {first:5.2f} s, second {second:6.1f} ms")
        print(f"  {name:6s} a new batch shape ({batch + 1}..{batch + shapes}), medians: first call "
              f"{np.median(calls):5.2f} s; its parts: trace and lowering {np.median(lowering):4.2f} s "
              f"+ XLA compile {np.median(compiling):4.2f} s + run {1e3 * np.median(running):4.1f} ms")


def top_p(vocab: int, repeat: int) -> None:
    print(f"\nNumPy top-p 0.9 alone, vocab {vocab}, medians of {repeat}, paired with np.max; peak memory")
    for name, make in (("realistic", harness.realistic_logits), ("flat", harness.flat_logits)):
        for batch in (1, 64, 256):
            x = make(batch, vocab)
            timing = harness.time_calls(lambda x=x: smp.sample(0, x, top_p=0.9), repeat=repeat,
                                        paired=lambda x=x: np.max(x, axis=-1))
            tracemalloc.start()
            try:
                smp.sample(0, x, top_p=0.9)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            ms, floor = timing.median_ms, timing.paired_median_ms
            print(f"  {name:9s} batch {batch:3d}: {ms:8.1f} ms   np.max {floor:6.2f} ms   "
                  f"{ms / floor:5.1f}x   peak {peak / x.nbytes:.2f}x logits")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--only", choices=("layouts", "greedy", "compile", "top-p"),
                        help="one of the four parts")
    args = parser.parse_args(argv)
    print(harness.machine_line())
    if args.only in (None, "layouts"):
        layouts(args.vocab, args.repeat)
    if args.only in (None, "greedy"):
        all_greedy(args.vocab, args.repeat)
    if args.only in (None, "compile"):
        compile_time(args.vocab)
    if args.only in (None, "top-p"):
        top_p(args.vocab, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
