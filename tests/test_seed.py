"""`Seed`: the same (seed, position) gives the same uniform, and the same token, on NumPy and JAX.

The uniforms are checked bit for bit against JAX's own threefry and across backends; the tokens
for batch invariance (alone, permuted, in a larger batch), for agreement between the backends
(the slow test: 100,352 rows at V = 128256), for their distribution (chi-square against
`reference_probs`), and through `generate`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling import _seed
from agnostic_sampling.stats import reference_probs

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

U32 = 2**32


def words(seed, position, xp=np):
    return _seed.to_words(smp.Seed(seed, position), xp)


def numpy_uniforms(seed, position, shape):
    return _seed.uniforms(words(seed, position), shape, np)


def test_threefry_matches_jax_random():
    from jax.extend.random import threefry_2x32 as jax_threefry

    rng = np.random.default_rng(0)
    k0, k1, c0, c1 = rng.integers(0, U32, (4, 2000), dtype=np.uint64).astype(np.uint32)
    ours = _seed.threefry_2x32((k0, k1), (c0, c1), np)
    theirs = jax.vmap(lambda a, b, c, d: jax_threefry(jnp.stack([a, b]), jnp.stack([c, d])))(k0, k1, c0, c1)
    np.testing.assert_array_equal(ours[0], np.asarray(theirs[:, 0]))
    np.testing.assert_array_equal(ours[1], np.asarray(theirs[:, 1]))
    # Random123's known-answer vector for threefry2x32_20 (key and counter from the digits of pi)
    known = _seed.threefry_2x32((np.uint32([0x13198A2E]), np.uint32([0x03707344])),
                                (np.uint32([0x243F6A88]), np.uint32([0x85A308D3])), np)
    assert (int(known[0][0]), int(known[1][0])) == (0xC4923A9C, 0x483DF7A0)


def test_seed_words_are_the_prng_key_words():
    # seed -> (high, low) words, as jax.random.PRNGKey lays out a seed below 2**32
    seed = 123456789
    key_data = np.asarray(jax.random.key_data(jax.random.PRNGKey(seed)))
    w = words(seed, 5)
    assert (int(w.key_hi), int(w.key_lo)) == tuple(int(v) for v in key_data)
    big = words(np.array([2**64 - 1, 2**40 + 3], np.uint64), 2**33 + 7)
    assert big.key_hi.tolist() == [U32 - 1, 2**8] and big.key_lo.tolist() == [U32 - 1, 3]
    assert (int(big.counter_hi), int(big.counter_lo)) == (2, 7)


def test_uniforms_identical_on_numpy_and_jax():
    rng = np.random.default_rng(1)
    seed = rng.integers(0, 2**63, 4096, dtype=np.int64)
    seed[:4] = [0, 1, U32 - 1, U32]
    position = rng.integers(0, 2**40, 4096, dtype=np.int64)
    a = numpy_uniforms(seed, position, (4096,))
    b = _seed.uniforms(words(seed, position, jnp), (4096,), jnp)
    c = jax.jit(lambda w: _seed.uniforms(w, (4096,), jnp))(words(seed, position, jnp))
    assert a.dtype == np.float32 and b.dtype == jnp.float32
    np.testing.assert_array_equal(a.view(np.uint32), np.asarray(b).view(np.uint32))
    np.testing.assert_array_equal(a.view(np.uint32), np.asarray(c).view(np.uint32))
    assert a.min() >= 0 and a.max() < 1
    assert np.all(a * 2**24 == np.round(a * 2**24))  # 24-bit grid: exact in float32
    # a uniform depends on (seed, position) only: a neighbour changes nothing, a position does
    assert numpy_uniforms(seed[7], position[7], ()) == a[7]
    assert numpy_uniforms(seed[7], position[7] + 1, ()) != a[7]
    assert np.unique(a).size > 4000  # independent-looking, not one value repeated


def test_advance_carries_into_the_high_word():
    start = words(np.array([5, 6]), np.array([U32 - 1, 2**40 - 2], np.int64))
    for xp in (np, jnp):
        moved = _seed.advance(start, 1, xp)
        expected = words(np.array([5, 6]), np.array([U32, 2**40 - 1], np.int64))
        for got, want in zip(moved, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(got), want)


def test_seed_is_a_frozen_pytree():
    key = smp.Seed(np.array([1, 2]), 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.seed = 4
    leaves, tree = jax.tree_util.tree_flatten(key)
    assert len(leaves) == 2 and jax.tree_util.tree_unflatten(tree, leaves) == key


# --------------------------------------------------------------------------------------------
# Tokens

V = 8192  # wide enough for the JAX candidate route (V / 32 >= 256 blocks)


def _benchmark(name: str):
    """A module of ``benchmarks/`` (not part of the package): ``harness`` or ``bench``."""
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).resolve().parent.parent / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def mixed_rows(n: int, vocab: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Realistic-shaped logits and per-row parameters mixing every strategy (greedy included)."""
    realistic_logits = _benchmark("harness").realistic_logits

    rng = np.random.default_rng(seed)
    params = {
        "temperature": rng.choice(np.array([0.0, 0.7, 1.0, 1.3], np.float32), n, p=[0.125, 0.3, 0.35, 0.225]),
        "top_k": rng.choice(np.array([0, 0, 20, 50, 100]), n),
        "top_p": rng.choice(np.array([1.0, 1.0, 0.9, 0.95], np.float32), n),
        "min_p": rng.choice(np.array([0.0, 0.0, 0.02, 0.1], np.float32), n),
    }
    return realistic_logits(n, vocab, seed), params


def take(params: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: value[rows] for name, value in params.items()}


@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_batch_invariance(name):
    xp = np if name == "numpy" else jnp
    logits, params = mixed_rows(24, V, seed=3)
    seeds = np.arange(24) * 1000 + 17
    positions = np.arange(24) % 5

    def draw(rows: np.ndarray) -> np.ndarray:
        key = smp.Seed(seeds[rows], positions[rows])
        return np.asarray(smp.sample(key, xp.asarray(logits[rows]), **take(params, rows)))

    everyone = draw(np.arange(24))
    for row in (0, 5, 11, 23):
        assert draw(np.array([row]))[0] == everyone[row]
    order = np.random.default_rng(4).permutation(24)
    np.testing.assert_array_equal(draw(order), everyone[order])
    bigger = np.concatenate([order[:10], np.arange(24), order[10:]])  # rows twice, other neighbours
    np.testing.assert_array_equal(draw(bigger), everyone[bigger])
    assert np.unique(everyone).size > 12  # the rows really differ


def test_same_tokens_on_numpy_and_jax():
    logits, params = mixed_rows(64, V, seed=5)
    key = smp.Seed(np.arange(64) + 99, 11)
    a = smp.sample(key, logits, **params)
    b = np.asarray(smp.sample(key, jnp.asarray(logits), **params))
    np.testing.assert_array_equal(a, b)
    c = smp.sample(smp.Seed(np.arange(64) + 99, 12), logits, **params)
    assert (c != a).any()  # another position, other tokens


def test_jit_traces_once_for_many_seeds_and_positions():
    logits, params = mixed_rows(16, V, seed=6)
    traces = []

    @jax.jit
    def draw(key, x):
        traces.append(1)
        return smp.sample(key, x, **params)

    x = jnp.asarray(logits)
    for step in range(6):
        seed = jnp.arange(16, dtype=jnp.uint32) + 1000 * step
        key = smp.Seed(seed, jnp.full(16, step, jnp.int32))
        ids = np.asarray(draw(key, x))
        np.testing.assert_array_equal(ids, smp.sample(smp.Seed(np.asarray(seed), step), logits, **params))
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", ["numpy", "jax"])
@pytest.mark.parametrize(("seed", "position", "error", "pattern"), [
    (-1, 0, ValueError, r"Seed.seed must be in \[0, 2\*\*64\), got -1"),
    (2**64, 0, ValueError, r"Seed.seed must be in \[0, 2\*\*64\), got 18446744073709551616"),
    (np.array([3, -2]), 0, ValueError, r"Seed.seed must be in \[0, 2\*\*64\), got -2 at row 1"),
    (0, np.array([0, -5]), ValueError, r"Seed.position must be in \[0, 2\*\*64\), got -5 at row 1"),
    (np.array([1.0, 2.0]), 0, TypeError, "Seed.seed must hold integers in .* got dtype float64"),
    (True, 0, TypeError, "Seed.seed must be an integer .* got bool"),
    (0, np.array([True, False]), TypeError, "Seed.position must hold integers .* got dtype bool"),
    (np.arange(3), 0, ValueError, r"Seed.seed has shape \(3,\), which does not broadcast to the batch shape"),
    (0, np.zeros((2, 2), int), ValueError, r"Seed.position has shape \(2, 2\), which does not broadcast"),
])
def test_bad_seed(name, seed, position, error, pattern):
    logits = np.zeros((2, 5), np.float32)
    xp = np if name == "numpy" else jnp
    with pytest.raises(error, match=pattern):
        smp.sample(smp.Seed(seed, position), xp.asarray(logits))


def test_traced_seed_with_numpy_logits():
    logits = np.zeros((2, 5), np.float32)
    with pytest.raises(TypeError, match="Seed.seed is a traced JAX value but the numpy backend"):
        jax.jit(lambda s: smp.sample(smp.Seed(s, 0), logits))(jnp.arange(2))


def test_generate_seed_shape():
    prompt = np.zeros((2, 1), np.int64)
    with pytest.raises(ValueError, match=r"Seed.seed has shape \(3,\); generate needs a scalar or one value"):
        smp.generate(smp.Seed(np.arange(3), 0), lambda ids: np.zeros((*ids.shape, 4), np.float32), prompt,
                     max_new_tokens=1)


# --------------------------------------------------------------------------------------------
# Distribution

DIST_V = 32
DIST_N = 65_536
DIST_STRATEGIES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.7),
    "top_k": dict(top_k=8),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.05),
    "combined": dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02),
}
DIST_OFF = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_seed_draws_follow_reference(name, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    logits = (np.random.default_rng(20261126).standard_normal((len(DIST_STRATEGIES), DIST_V)) * 1.5)
    logits = logits.astype(np.float32)
    params = {k: np.array([s.get(k, off) for s in DIST_STRATEGIES.values()]) for k, off in DIST_OFF.items()}
    expected = reference_probs(logits, **params)
    for name_p in ("top_p", "min_p"):  # no token within 1e-4 of a cut: either side would be right
        for factor in (1 - 1e-4, 1 + 1e-4):
            moved = dict(params, **{name_p: np.clip(params[name_p] * factor, 0, 1)})
            assert np.array_equal(reference_probs(logits, **moved) > 0, expected > 0)
    xp = np if name == "numpy" else jnp
    # one seed, a run of positions: consecutive counters must give independent uniforms
    positions = np.arange(DIST_N * len(DIST_STRATEGIES)).reshape(DIST_N, -1)
    ids = smp.sample(smp.Seed(seed, positions), xp.asarray(np.broadcast_to(logits, (DIST_N, *logits.shape))),
                     **params)
    assert_samples_match(np.asarray(ids), expected, seed=seed)


# --------------------------------------------------------------------------------------------
# generate

GEN_V = 64
TABLE = (np.random.default_rng(8).standard_normal((GEN_V, GEN_V)) * 2).astype(np.float32)
GEN_STRATEGIES = {  # every field given, so JAX compiles the loop once for all of them
    "greedy": dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0),
    "temperature": dict(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0),
    "top_k": dict(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0),
    "top_p": dict(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0),
    "min_p": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05),
    "combined": dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02),
}


def bigram(ids):
    xp = jnp if isinstance(ids, jax.Array) else np
    return xp.asarray(TABLE)[ids]


PROMPT = np.array([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0]])
LENGTHS = np.array([4, 2, 1])


@pytest.mark.parametrize("strategy", list(GEN_STRATEGIES))
def test_generate_same_tokens_on_numpy_and_jax(strategy):
    key = smp.Seed(np.array([11, 12, 13]), np.array([0, 100, 2**40]))
    kw = dict(max_new_tokens=12, prompt_lengths=LENGTHS, **GEN_STRATEGIES[strategy])
    a = smp.generate(key, bigram, PROMPT, **kw)
    b = smp.generate(key, bigram, jnp.asarray(PROMPT), **kw)
    np.testing.assert_array_equal(a.ids, np.asarray(b.ids))
    # each row as if decoded alone
    alone = smp.generate(smp.Seed(12, 100), bigram, PROMPT[1:2], max_new_tokens=12, prompt_lengths=[2],
                         **GEN_STRATEGIES[strategy])
    np.testing.assert_array_equal(alone.ids[0], a.ids[1])
    if strategy != "greedy":
        other = smp.generate(smp.Seed(np.array([11, 12, 13]) + 1, 0), bigram, PROMPT, **kw)
        assert (other.ids != a.ids).any()


def test_generate_advances_the_position():
    # the token at index j of ids is drawn with Seed(seed, position + j)
    out = smp.generate(smp.Seed(7, 30), bigram, PROMPT[:1], max_new_tokens=6, temperature=1.5)
    for j in range(4, 10):
        token = smp.sample(smp.Seed(7, 30 + j), TABLE[out.ids[0, j - 1]][None], temperature=1.5)[0]
        assert token == out.ids[0, j]


def test_generate_with_state_same_tokens_on_numpy_and_jax():
    def step(calls, ids):
        return bigram(ids), calls + 1

    key = smp.Seed(np.array([3, 4, 5]), 9)
    kw = dict(max_new_tokens=8, prompt_lengths=LENGTHS, **GEN_STRATEGIES["combined"])
    a = smp.generate_with_state(key, step, 0, PROMPT, **kw)
    b = smp.generate_with_state(key, step, jnp.int32(0), jnp.asarray(PROMPT), **kw)
    np.testing.assert_array_equal(a.ids, np.asarray(b.ids))
    assert a.ids.shape == (3, 12) and (a.num_generated == 8).all()


# --------------------------------------------------------------------------------------------
# Agreement at scale

AGREE_V = 128_256
AGREE_DISTINCT = 256  # distinct (logits, parameters) rows, tiled with distinct seeds
AGREE_CHUNK = 1024  # rows per call
AGREE_CHUNKS = 98  # 100,352 rows


@pytest.mark.slow
def test_agreement_at_scale():
    """Same (seed, position), same token on NumPy and JAX: >= 99.99% of 100,352 rows of float32
    logits at V = 128256 (`realistic_logits`, 256 distinct rows tiled with distinct seeds) with
    the benchmark's mixed rows (temperature, top-k, top-p and min-p mixed per row, one in eight
    greedy); 100% of greedy rows. A disagreement needs the two backends' float32 masses to put
    the uniform within rounding of a token boundary. About 4 minutes on two shared CPU cores."""
    _mixed_params = _benchmark("bench")._mixed_params
    realistic_logits = _benchmark("harness").realistic_logits

    tiles = AGREE_CHUNK // AGREE_DISTINCT
    logits = np.tile(realistic_logits(AGREE_DISTINCT, AGREE_V, seed=18), (tiles, 1))
    params = _mixed_params(AGREE_CHUNK)
    greedy = params["temperature"] == 0
    on_jax = jax.jit(lambda key, x, p: smp.sample(key, x, params=p))
    x_jax = jnp.asarray(logits)
    p_jax = smp.SamplingParams(**{name: jnp.asarray(value) for name, value in params.items()})
    p_numpy = smp.SamplingParams(**params)
    differ = differ_greedy = 0
    for chunk in range(AGREE_CHUNKS):
        seeds = np.arange(AGREE_CHUNK, dtype=np.uint32) + chunk * AGREE_CHUNK + 2**31
        key = smp.Seed(seeds, np.arange(AGREE_CHUNK) % 97)
        a = smp.sample(key, logits, params=p_numpy)
        b = np.asarray(on_jax(key, x_jax, p_jax))
        differ += int((a != b).sum())
        differ_greedy += int((a != b)[greedy].sum())
    rows = AGREE_CHUNK * AGREE_CHUNKS
    assert differ_greedy == 0
    assert differ <= rows * 1e-4, f"{differ} of {rows} rows differ"
    print(f"agreement: {rows - differ} of {rows} rows ({differ} differ)")
