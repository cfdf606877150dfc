"""Overhead of the decode loop: generate_with_state with a step that only looks up logits, against
the same smp.sample calls in bare loops. B=8, V=50257, top_k=50, top_p=0.9, temperature=0.8, 67 positions.

Run from the repository root: python benchmarks/generate_loop.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import agnostic_sampling as smp
from agnostic_sampling._dispatch import get_backend

get_backend("jax")  # registers SamplingParams as a pytree before the hand-written jits below
B, V, P, N = 8, 50257, 4, 64
S = P + N - 1
TABLE = np.random.default_rng(0).normal(0, 2, (256, V)).astype(np.float32)
prompt = np.random.default_rng(1).integers(0, 256, (B, P))
kw = dict(top_k=50, top_p=0.9, temperature=0.8)


def best(f, reps=5):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times) / S * 1e3


def np_bare():
    g, ids = np.random.default_rng(0), prompt[:, -1]
    for _ in range(S):
        ids = smp.sample(g, TABLE[ids % 256], **kw)


np_gen = best(lambda: smp.generate_with_state(0, lambda s, ids: (TABLE[ids % 256], s), None, prompt,
                                              max_new_tokens=N, **kw))
print(f"numpy: generate_with_state {np_gen:.2f} ms/position, bare loop of sample {best(np_bare):.2f}")

JT, jp, key = jnp.asarray(TABLE), jnp.asarray(prompt), jax.random.key(0)
params = smp.SamplingParams(
    temperature=jnp.full(B, 0.8), top_k=jnp.full(B, 50, jnp.int32), top_p=jnp.full(B, 0.9)
)


@jax.jit
def fori(key, ids, p):
    def body(i, ids):
        return smp.sample(jax.random.fold_in(key, i), JT[ids % 256], params=p)

    return lax.fori_loop(0, S, body, ids)


one = jax.jit(lambda k, ids, p: smp.sample(k, JT[ids % 256], params=p))


def python_loop():
    ids = jp[:, -1]
    for i in range(S):
        ids = one(jax.random.fold_in(key, i), ids, params)
    ids.block_until_ready()


def step(s, ids):
    return JT[ids % 256], s


cases = {
    "generate_with_state": lambda: smp.generate_with_state(key, step, jnp.int32(0), jp, max_new_tokens=N,
                                                           params=params).ids.block_until_ready(),
    "lax.fori_loop of sample": lambda: fori(key, jp[:, -1], params).block_until_ready(),
    "Python loop of jitted sample": python_loop,
}
for name, f in cases.items():
    f()
    print(f"jax: {name} {best(f):.2f} ms/position")
