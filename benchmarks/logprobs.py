"""Cost of smp.logprobs (top_n=20) against smp.probs with the same parameters, on each backend.

64 x 128256 float32 logits (normal, scale 3), temperature 0.8, top_k 50, top_p 0.9; the median
of repeated timeit runs, after a warm-up call (so JAX compiles are not counted). The goal is a
ratio of at most 2.

Run from the repository root: python benchmarks/logprobs.py [--repeat N] [--rows B] [--vocab V]
"""

import argparse
import timeit

import numpy as np

import agnostic_sampling as smp

PARAMS = dict(temperature=0.8, top_k=50, top_p=0.9)


def median_ms(call, repeat):
    call()  # warm-up (and the JAX compile)
    return 1e3 * float(np.median(timeit.repeat(call, number=1, repeat=repeat)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--top-n", type=int, default=20)
    args = parser.parse_args()

    logits = (np.random.default_rng(0).standard_normal((args.rows, args.vocab)) * 3).astype(np.float32)
    backends = [("numpy", logits, lambda result: result)]
    try:
        import jax
        import jax.numpy as jnp

        backends.append(("jax", jnp.asarray(logits), jax.block_until_ready))
    except ImportError:
        pass
    print(f"{args.rows} x {args.vocab}, {PARAMS}, top_n={args.top_n}, median of {args.repeat}", flush=True)
    for name, x, ready in backends:
        ids = smp.sample(0, x, **PARAMS)
        probs_ms = median_ms(lambda x=x, ready=ready: ready(smp.probs(x, **PARAMS)), args.repeat)
        for kind in ("processed", "raw"):
            logprobs_ms = median_ms(
                lambda x=x, ids=ids, ready=ready, kind=kind: ready(
                    smp.logprobs(x, ids, kind=kind, top_n=args.top_n, **PARAMS)),
                args.repeat)
            print(f"{name:6s} {kind:9s} logprobs {logprobs_ms:8.1f} ms   probs {probs_ms:8.1f} ms   "
                  f"ratio {logprobs_ms / probs_ms:5.2f}", flush=True)


if __name__ == "__main__":
    main()
