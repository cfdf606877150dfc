"""The JAX backend's candidate route (a few blocks of each row, see `backends/_jax_search.py`)
against the whole-row route it falls back to: every row that can take either gives the same kept
set and the same token for the same key, the routes are all exercised, and the draws pass the
chi-square test.

Vocabularies here are 8192-16384 tokens, the smallest that use candidates (256 blocks of 32)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.stats import reference_probs

jax = pytest.importorskip("jax")
jnp = jax.numpy
J = pytest.importorskip("agnostic_sampling.backends.jax")
P = pytest.importorskip("agnostic_sampling.backends._jax_pipeline")
S = pytest.importorskip("agnostic_sampling.backends._jax_search")

V = 16384


def _rows() -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    """Logits and per-row parameters chosen to reach every route: (name, logits, parameters)."""
    rng = np.random.default_rng(16384)

    def peaked() -> np.ndarray:
        x = rng.standard_normal(V) * 2
        x[rng.choice(V, 20, replace=False)] += 8
        return x

    flat = lambda: rng.standard_normal(V) * 0.3  # noqa: E731
    coarse = lambda: np.round(rng.standard_normal(V) * 2)  # noqa: E731 ties at every block maximum
    with_inf = peaked()
    with_inf[[5, 9000]] = np.inf
    with_nan = peaked()
    with_nan[rng.choice(V, 300, replace=False)] = np.nan
    table = [  # name, logits, temperature, top_k, top_p, min_p, min_keep
        ("top-k 50 + top-p, peaked", peaked(), 0.8, 50, 0.9, 0.0, 1),
        ("top-k 5000: too many for the candidates", peaked(), 1.0, 5000, 1.0, 0.0, 1),
        ("top-p on a flat row: a wide nucleus", flat(), 1.0, 0, 0.9, 0.0, 1),
        ("top-p on a peaked row", peaked(), 1.0, 0, 0.5, 0.0, 1),
        ("top-k 40, ties at the bound", coarse(), 1.0, 40, 1.0, 0.0, 1),
        ("top-p 0.3 + min_keep 3, ties", coarse(), 0.7, 0, 0.3, 0.0, 3),
        ("min-p 1e-6: kept set beyond the candidates", peaked(), 1.0, 0, 1.0, 1e-6, 1),
        ("top-p + min_keep 500", peaked(), 1.0, 0, 0.95, 0.0, 500),
        ("greedy", peaked(), 0.0, 50, 0.9, 0.0, 1),
        ("+inf tokens", with_inf, 1.0, 50, 1.0, 0.0, 1),
        ("NaN tokens", with_nan, 1.0, 0, 0.9, 0.0, 1),
        ("no finite logit", np.full(V, -np.inf), 1.0, 5, 1.0, 0.0, 1),
        ("top-k 1", peaked(), 1.0, 1, 1.0, 0.0, 1),
        ("top-k 63 + min-p, hot", peaked(), 1.5, 63, 1.0, 0.05, 1),
    ]
    names = [row[0] for row in table]
    logits = np.stack([row[1] for row in table]).astype(np.float32)
    columns = list(zip(*(row[2:] for row in table), strict=True))
    params = dict(
        temperature=np.array(columns[0], np.float32), top_k=np.array(columns[1], np.int32),
        top_p=np.array(columns[2], np.float32), min_p=np.array(columns[3], np.float32),
        min_keep=np.array(columns[4], np.int32),
    )
    return logits, params, names


LOGITS, PARAMS, NAMES = _rows()


def _run(op: str, *args: Any, candidates: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The backend operation, traced afresh with or without the candidate route."""
    params = args[-1]
    with monkeypatch.context() as patch:
        if not candidates:  # the route is chosen where the rows are prepared, in _jax_pipeline.py
            patch.setattr(P, "_candidate_block", lambda vocab: 0)
        fn = jax.jit(getattr(J, "_" + op).__wrapped__, static_argnames="steps")
        return jax.block_until_ready(fn(*args, steps=P._steps(params)))


def _routes(logits: np.ndarray, params: smp.SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Per row: whether the candidates proved the threshold exact, and whether they hold the kept set."""

    @jax.jit
    def flags(x: Any, p: smp.SamplingParams) -> tuple[Any, Any]:
        steps = P._steps(p)
        prep = P._prepare(x, p, steps)
        cand = S._candidates(prep, steps)
        threshold, exact = S._candidate_threshold(
            cand, prep.rows, steps, prep.skip, lambda: jnp.sum(jnp.exp(P._full_z(prep, steps)), axis=-1))
        inside = exact & ((threshold > cand.bound) | (cand.bound == -jnp.inf))
        return exact & ~prep.skip, inside & ~prep.skip

    exact, inside = flags(jnp.asarray(logits), params)
    return np.asarray(exact), np.asarray(inside)


def test_every_route_is_taken() -> None:
    assert S._candidate_block(V) and S._candidate_block(8192) and not S._candidate_block(8160)
    exact, inside = _routes(LOGITS, smp.SamplingParams(**PARAMS))
    by_name = dict(zip(NAMES, zip(exact, inside, strict=True), strict=True))
    assert by_name["top-k 50 + top-p, peaked"] == (True, True)
    assert by_name["top-p on a peaked row"] == (True, True)
    assert not by_name["top-k 5000: too many for the candidates"][0]
    assert not by_name["top-p on a flat row: a wide nucleus"][0]
    assert not by_name["top-p + min_keep 500"][0]
    assert by_name["min-p 1e-6: kept set beyond the candidates"] == (True, False)


def test_kept_sets_are_the_same_on_both_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    params = smp.SamplingParams(**PARAMS)
    x = jnp.asarray(LOGITS)
    z_cand, status_cand = _run("process_logits", x, params, candidates=True, monkeypatch=monkeypatch)
    z_rows, status_rows = _run("process_logits", x, params, candidates=False, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(np.asarray(z_cand), np.asarray(z_rows))
    np.testing.assert_array_equal(np.asarray(status_cand), np.asarray(status_rows))
    # And both are the NumPy backend's kept sets (the bad rows aside: eager NumPy raises on them).
    good = [i for i, name in enumerate(NAMES) if name not in ("+inf tokens", "NaN tokens", "no finite logit")]
    rows = {name: value[good] for name, value in PARAMS.items()}
    kept_numpy = smp.probs(LOGITS[good], **rows) > 0
    np.testing.assert_array_equal(np.isfinite(np.asarray(z_cand))[good], kept_numpy)
    kept_reference = reference_probs(LOGITS[good], **rows) > 0
    np.testing.assert_array_equal(kept_numpy, kept_reference)


def test_draws_are_the_same_on_both_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    params = smp.SamplingParams(**PARAMS)
    x = jnp.asarray(LOGITS)
    kept = np.isfinite(np.asarray(jax.jit(lambda x, p: smp.process_logits(x, params=p))(x, params)))
    for seed in range(16):
        key = jax.random.key(seed)
        ids_cand, _ = _run("sample", key, x, params, candidates=True, monkeypatch=monkeypatch)
        ids_rows, _ = _run("sample", key, x, params, candidates=False, monkeypatch=monkeypatch)
        ids_cand = np.asarray(ids_cand)
        np.testing.assert_array_equal(ids_cand, np.asarray(ids_rows))
        no_finite = NAMES.index("no finite logit")
        assert ids_cand[no_finite] == -1
        others = np.delete(np.arange(len(NAMES)), no_finite)
        assert kept[others, ids_cand[others]].all()


def test_a_row_draws_the_same_token_whatever_route_its_batch_takes() -> None:
    """Per-row keys: a row alone (candidates only) and beside rows that need whole-row work."""
    params = smp.SamplingParams(**PARAMS)
    keys = jax.random.split(jax.random.key(7), len(NAMES))
    # Under jit: the bad rows (+inf, NaN, no finite logit) follow the traced policy.
    draw = jax.jit(lambda k, x, p: smp.sample(k, x, params=p))
    together = np.asarray(draw(keys, jnp.asarray(LOGITS), params))
    for row in (NAMES.index("top-k 50 + top-p, peaked"), NAMES.index("top-p on a peaked row")):
        alone = smp.SamplingParams(**{name: value[row:row + 1] for name, value in PARAMS.items()})
        ids = smp.sample(keys[row:row + 1], jnp.asarray(LOGITS[row:row + 1]), params=alone)
        assert int(ids[0]) == together[row]


def test_draws_follow_the_reference_on_both_routes_in_one_batch() -> None:
    """A row drawn from its candidates next to a row drawn from the whole row, in every call.

    Level 1e-6 per row (Bonferroni over the two), power 0.99 against a total-variation distance
    of 0.06; zero tolerance for a token outside the kept set."""
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match
    from agnostic_sampling.stats import required_samples

    vocab, batch = 8192, 512
    rng = np.random.default_rng(8192)
    peaked = rng.standard_normal(vocab) * 2
    peaked[rng.choice(vocab, 20, replace=False)] += 5
    flat = rng.standard_normal(vocab) * 0.3
    logits = np.stack([peaked, flat]).astype(np.float32)
    rows = dict(temperature=np.array([0.8, 1.0], np.float32), top_k=np.array([30, 0], np.int32),
                top_p=np.array([0.9, 0.3], np.float32))
    params = smp.SamplingParams(**rows)
    exact, inside = _routes(logits, params)
    assert inside.tolist() == [True, False] and exact.tolist() == [True, False]
    expected = reference_probs(logits, **rows)
    needed = required_samples(0.06, alpha=1e-6, cells=512)  # the flat row pools to about 400 cells
    calls = -(-needed // batch)
    draw = jax.jit(lambda key: smp.sample(key, jnp.broadcast_to(jnp.asarray(logits), (batch, 2, vocab)),
                                          params=params))
    ids = np.concatenate([np.asarray(draw(jax.random.key(seed))) for seed in range(calls)])
    assert_samples_match(ids, expected, alpha=2e-6, tv=0.06, seed=0)


@pytest.mark.parametrize("chunk_rows", [4, 2, 1])
def test_a_few_rows_needing_whole_rows_are_computed_alone(chunk_rows: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A few rows fall back: they are gathered and computed alone, in chunks of ``chunk_rows``
    (one chunk, two with padding, three; see `_for_rows`); kept sets and draws equal the
    whole-row route's, row for row."""
    monkeypatch.setattr(S, "_CHUNK", chunk_rows * V)
    rng = np.random.default_rng(2)
    batch = 32
    logits = rng.standard_normal((batch, V)) * 2
    logits[:, rng.choice(V, 20, replace=False)] += 12  # the spikes hold nearly all the mass
    flat = [3, 17, 30]
    logits[flat] = rng.standard_normal((len(flat), V)) * 0.3  # wide nuclei: these rows fall back
    logits = logits.astype(np.float32)
    rows = dict(temperature=np.full(batch, 0.9, np.float32), top_p=np.full(batch, 0.8, np.float32))
    params = smp.SamplingParams(**rows)
    exact, inside = _routes(logits, params)
    assert np.flatnonzero(~exact).tolist() == flat and np.flatnonzero(~inside).tolist() == flat
    assert S._CHUNK // V < batch  # so the rows are gathered, not computed with the batch

    x = jnp.asarray(logits)
    z_cand, _ = _run("process_logits", x, params, candidates=True, monkeypatch=monkeypatch)
    z_rows, _ = _run("process_logits", x, params, candidates=False, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(np.asarray(z_cand), np.asarray(z_rows))
    np.testing.assert_array_equal(np.isfinite(np.asarray(z_cand)), reference_probs(logits, **rows) > 0)
    for seed in range(8):
        key = jax.random.key(seed)
        ids_cand, _ = _run("sample", key, x, params, candidates=True, monkeypatch=monkeypatch)
        ids_rows, _ = _run("sample", key, x, params, candidates=False, monkeypatch=monkeypatch)
        np.testing.assert_array_equal(np.asarray(ids_cand), np.asarray(ids_rows))


def test_the_top_p_search_gives_the_same_threshold_whatever_its_guess() -> None:
    """``below`` only places the first pass's points: a right guess, a guess under the answer,
    one above it, -inf, 0 and NaN all end on the threshold found with no guess."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((6, V)) * 2).astype(np.float32)
    z = jnp.asarray(x - x.max(axis=1, keepdims=True))
    floor = jnp.full((6,), -jnp.inf)
    top_p = jnp.asarray([0.5, 0.9, 0.99, 0.0, 0.3, 0.999], jnp.float32)
    skip = jnp.zeros(6, bool)
    search = jax.jit(lambda below: S._top_p_threshold(z, jnp.exp(z), floor, top_p, skip, below=below))
    plain = np.asarray(jax.jit(lambda: S._top_p_threshold(z, jnp.exp(z), floor, top_p, skip))())
    assert len(set(plain.tolist())) == 6  # six different thresholds
    for below in (plain, plain - 1.5, plain + 0.7, np.full(6, -np.inf), np.zeros(6), np.full(6, np.nan),
                  np.nextafter(plain, np.float32(-np.inf))):
        np.testing.assert_array_equal(np.asarray(search(jnp.asarray(below, jnp.float32))), plain)
