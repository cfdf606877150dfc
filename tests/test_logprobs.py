"""`logprobs` on every backend: against the float64 oracle, the edge cases, jit, vmap and errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.stats import reference_logprobs

_JITTED: list[Any] = []


def logprobs(backend: Any, logits: np.ndarray, ids: Any, **kw: Any) -> smp.LogprobsResult:
    """``smp.logprobs`` on ``backend`` (jitted with traced parameters for jax-jit), as NumPy."""
    if backend.name == "numpy":
        out = smp.logprobs(np.asarray(logits), np.asarray(ids), **kw)
    else:
        import jax
        import jax.numpy as jnp

        logits, ids = jnp.asarray(logits), jnp.asarray(ids)
        if backend.jitted:
            if not _JITTED:
                _JITTED.append(jax.jit(smp.logprobs, static_argnames=("kind", "top_n")))
            static = {name: kw.pop(name) for name in ("kind", "top_n") if name in kw}
            out = _JITTED[0](logits, ids, params=smp.SamplingParams(**kw), **static)
        else:
            out = smp.logprobs(logits, ids, **kw)
    return smp.LogprobsResult(*(np.asarray(field) for field in out))


def assert_matches(got: smp.LogprobsResult, want: smp.LogprobsResult, atol: float = 1e-5,
                   rtol: float = 1e-6) -> None:
    """Same support, ranks, ids and counts; finite values within ``atol`` (plus ``rtol`` for the
    large magnitudes of tiny temperatures, where float32 itself is coarser than 1e-5)."""
    for name in ("rank", "top_ids", "kept_count"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("token", "top_logprobs", "kept_log_mass"):
        a, b = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=f"{name}: support")
        finite = np.isfinite(b)
        assert np.isfinite(a[finite]).all(), name
        np.testing.assert_allclose(a[finite], b[finite], atol=atol, rtol=rtol, err_msg=name)


def random_logits(seed: int, shape: tuple[int, ...], scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def per_row_params(seed: int, rows: int) -> dict[str, np.ndarray]:
    """A mix of greedy, hot, top-k, nucleus and min-p rows."""
    rng = np.random.default_rng(seed)

    def on() -> np.ndarray:
        return rng.random(rows) < 0.6

    return dict(
        temperature=np.where(rng.random(rows) < 0.15, 0, rng.uniform(0.3, 2.0, rows)).astype(np.float32),
        top_k=np.where(on(), rng.integers(1, 40, rows), 0).astype(np.int32),
        top_p=np.where(on(), rng.uniform(0.05, 1, rows), 1).astype(np.float32),
        min_p=np.where(on(), rng.uniform(0, 0.3, rows), 0).astype(np.float32),
        min_keep=np.where(on(), rng.integers(1, 6, rows), 1).astype(np.int32),
    )


# One row per setting (per-row parameters), so that each backend compiles once per shape.
SETTINGS = [
    {},
    {"temperature": 0.7, "top_k": 20},
    {"temperature": 1.3, "top_p": 0.8},
    {"min_p": 0.05, "min_keep": 3},
    {"temperature": 0.8, "top_k": 50, "top_p": 0.9},
    {"temperature": 0.0},
    {"top_p": 0.3, "min_p": 0.2, "min_keep": 2},
    {"temperature": 2.0, "top_k": 3000},
]


def rows_of(settings: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """Per-row parameter arrays, row i taking ``settings[i]`` (the off value elsewhere)."""
    off = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "min_keep": 1}
    return {name: np.array([row.get(name, value) for row in settings]) for name, value in off.items()}


@pytest.mark.parametrize("kind", ["processed", "raw"])
@pytest.mark.parametrize("vocab", [300, 8192])
def test_matches_reference(backend, kind, vocab):
    rows = len(SETTINGS)
    logits = random_logits(vocab, (rows, vocab))
    ids = np.random.default_rng(1).integers(0, vocab, rows)
    ids[::2] = np.argmax(logits[::2], axis=-1)  # kept tokens for sure
    params = rows_of(SETTINGS)
    got = logprobs(backend, logits, ids, kind=kind, top_n=7, **params)
    assert_matches(got, reference_logprobs(logits, ids, kind=kind, top_n=7, **params))


def test_matches_reference_with_scalar_settings(backend):
    """Concrete scalars let the JAX backend leave steps out of the program: the same answers."""
    logits = random_logits(12, (3, 1000))
    ids = np.array([5, int(np.argmax(logits[1])), 7])
    for settings in ({}, {"temperature": 0.8, "top_k": 50, "top_p": 0.9}):
        got = logprobs(backend, logits, ids, top_n=5, **settings)
        assert_matches(got, reference_logprobs(logits, ids, top_n=5, **settings))


@pytest.mark.parametrize("kind", ["processed", "raw"])
def test_per_row_parameters_and_ids_from_sample(backend, kind):
    rows, vocab = 24, 4096
    logits = random_logits(7, (rows, vocab))
    params = per_row_params(8, rows)
    ids = backend.sample(backend.key(9), logits, **params)
    got = logprobs(backend, logits, ids, kind=kind, top_n=20, **params)
    assert_matches(got, reference_logprobs(logits, ids, kind=kind, top_n=20, **params))
    processed = got if kind == "processed" else logprobs(backend, logits, ids, **params)
    assert np.isfinite(processed.token).all()  # a sampled token is always in the kept set


DTYPE_KINDS = [("float16", "processed"), ("float16", "raw"), ("bfloat16", "processed"), ("bfloat16", "raw"),
               ("float32", "processed"), ("float64", "raw")]


@pytest.mark.parametrize(("dtype", "kind"), DTYPE_KINDS)
def test_every_dtype(backend, dtype, kind):
    dtype = pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    logits = random_logits(3, (3, 500)).astype(dtype)
    ids = np.array([0, 17, int(np.argmax(logits[2].astype(np.float32)))])
    got = logprobs(backend, logits, ids, kind=kind, top_n=4, temperature=0.9, top_p=0.95)
    expected_dtype = np.float64 if dtype == np.float64 and backend.name == "numpy" else np.float32
    assert got.token.dtype == got.top_logprobs.dtype == got.kept_log_mass.dtype == expected_dtype
    assert_matches(got, reference_logprobs(logits, ids, kind=kind, top_n=4, temperature=0.9, top_p=0.95))


def test_ranks_share_the_smaller_rank_on_ties(backend):
    logits = np.tile(np.array([1.0, 3.0, 2.0, 2.0, 3.0, 0.0], np.float32), (6, 1))
    got = logprobs(backend, logits, np.arange(6), top_k=2)
    assert got.rank.tolist() == [5, 1, 3, 3, 1, 6]
    assert got.kept_count.tolist() == [2] * 6
    assert np.isneginf(got.token[[0, 2, 3, 5]]).all() and np.isfinite(got.token[[1, 4]]).all()


def test_outside_the_kept_set_processed_is_minus_inf_raw_is_finite(backend):
    logits = random_logits(4, (2, 64))
    ids = np.argsort(logits, axis=-1)[:, 0]  # each row's least likely token
    processed = logprobs(backend, logits, ids, top_k=5)
    raw = logprobs(backend, logits, ids, kind="raw", top_k=5)
    assert np.isneginf(processed.token).all() and np.isfinite(raw.token).all()
    assert raw.rank.tolist() == [64, 64]
    np.testing.assert_array_equal(raw.kept_log_mass, processed.kept_log_mass)  # the same kept set


def test_tiny_temperature_keeps_log_probs_finite_where_probs_underflow(backend):
    logits = np.array([[0.0, -1.0, -2.0, -3.0, -50.0]], np.float32)
    ids = np.array([2])
    p = backend.probs(logits, temperature=1e-3, top_k=3)
    assert p[0, 2] == 0  # exp(-2000) underflows as a probability
    got = logprobs(backend, logits, ids, temperature=1e-3, top_k=3, top_n=4)
    assert np.isfinite(got.token).all() and got.token[0] == pytest.approx(-2000, rel=1e-6)
    assert got.top_ids.tolist() == [[0, 1, 2, 3]] and np.isneginf(got.top_logprobs[0, 3])
    assert_matches(got, reference_logprobs(logits, ids, temperature=1e-3, top_k=3, top_n=4))
    hot = logprobs(backend, logits, ids, kind="raw", temperature=1e4, top_p=0.5)
    assert_matches(hot, reference_logprobs(logits, ids, kind="raw", temperature=1e4, top_p=0.5))


def test_rows_with_minus_inf_logits(backend):
    logits = np.array([[-np.inf, 1.0, -np.inf, 0.0], [2.0, -np.inf, 2.0, -np.inf]], np.float32)
    ids = np.array([0, 2])
    raw = logprobs(backend, logits, ids, kind="raw", top_n=4)
    assert np.isneginf(raw.token[0]) and raw.rank.tolist() == [3, 1]
    assert raw.top_ids.tolist() == [[1, 3, 0, 2], [0, 2, 1, 3]]  # -inf last, by index
    assert raw.kept_count.tolist() == [2, 2] and raw.kept_log_mass.tolist() == [0, 0]
    np.testing.assert_allclose(raw.token[1], np.log(0.5), atol=1e-6)
    assert_matches(raw, reference_logprobs(logits, ids, kind="raw", top_n=4))
    processed = logprobs(backend, logits, ids, top_n=4, top_k=1)
    assert processed.kept_count.tolist() == [1, 2]  # ties at the k-th value are kept
    assert_matches(processed, reference_logprobs(logits, ids, top_n=4, top_k=1))


@pytest.mark.parametrize("vocab", [5, 4096])
def test_top_n_ties_by_index(backend, vocab):
    logits = np.zeros((2, vocab), np.float32)
    logits[:, [vocab - 1, 2]] = 1.0
    ids = np.array([0, 1])
    raw = logprobs(backend, logits, ids, kind="raw", top_n=5)
    assert raw.top_ids.tolist() == [[2, vocab - 1, 0, 1, 3]] * 2
    processed = logprobs(backend, logits, ids, top_n=5, top_k=2)
    assert processed.top_ids.tolist() == [[2, vocab - 1, 0, 1, 3]] * 2
    assert np.isneginf(processed.top_logprobs[:, 2:]).all()
    np.testing.assert_allclose(processed.top_logprobs[:, :2], np.log(0.5), atol=1e-6)


def test_greedy_rows(backend):
    logits = np.array([[1.0, 4.0, 4.0, 0.0], [3.0, 1.0, 2.0, 0.0]], np.float32)
    got = logprobs(backend, logits, np.array([1, 2]), temperature=0.0, top_n=3)
    assert got.token[0] == 0 and np.isneginf(got.token[1])
    assert got.top_ids.tolist() == [[1, 0, 2], [0, 1, 2]]
    assert got.top_logprobs[:, 0].tolist() == [0, 0] and np.isneginf(got.top_logprobs[:, 1:]).all()
    assert got.kept_count.tolist() == [1, 1] and got.kept_log_mass.tolist() == [0, 0]
    raw = logprobs(backend, logits, np.array([1, 2]), kind="raw", temperature=0.0)
    assert np.isfinite(raw.token).all()


def test_kept_log_mass_is_the_tempered_mass_of_the_kept_set(backend):
    logits = random_logits(5, (7, 200))
    ids = np.zeros(7, np.int64)
    params = rows_of([{"temperature": 0.6, "top_k": 10}, {"temperature": 1.7, "top_p": 0.7}, {"min_p": 0.1},
                      {}, {"temperature": 0.5}, {"top_k": 200}, {"top_k": 199, "min_keep": 200}])
    got = logprobs(backend, logits, ids, **params)
    tempered = np.exp((logits - logits.max(-1, keepdims=True)) / params["temperature"][:, None])
    tempered /= tempered.sum(-1, keepdims=True)
    kept = backend.probs(logits, **params) > 0
    np.testing.assert_allclose(got.kept_log_mass, np.log((tempered * kept).sum(-1)), atol=1e-5)
    assert got.kept_count.tolist() == kept.sum(-1).tolist()
    assert (got.kept_log_mass[:3] < 0).all()
    assert got.kept_log_mass[3:].tolist() == [0] * 4 and got.kept_count[3:].tolist() == [200] * 4


def test_importance_ratio_pitfall(backend):
    """The processed distribution sums to 1 over the kept set; the raw one to the kept mass."""
    logits = random_logits(6, (2, 100))
    ids = np.array([int(np.argmax(row)) for row in logits])
    everything = np.arange(100)
    processed = logprobs(backend, logits, ids, top_p=0.8, top_n=100)
    raw = logprobs(backend, logits, ids, kind="raw", top_p=0.8, top_n=100)
    for row in range(2):
        by_id = np.empty(100)
        by_id[processed.top_ids[row]] = processed.top_logprobs[row]
        kept = np.isfinite(by_id)
        raw_by_id = np.empty(100)
        raw_by_id[raw.top_ids[row]] = raw.top_logprobs[row]
        assert sorted(raw.top_ids[row].tolist()) == everything.tolist()
        np.testing.assert_allclose(np.exp(by_id[kept]).sum(), 1.0, atol=1e-5)
        np.testing.assert_allclose(np.exp(raw_by_id[kept]).sum(), np.exp(raw.kept_log_mass[row]), atol=1e-5)
    # The log-ratio of the sampled token: exactly the kept mass, not 0.
    np.testing.assert_allclose(processed.token - raw.token, -raw.kept_log_mass, atol=1e-5)
    assert (raw.kept_log_mass < -0.01).all()


def test_caller_arrays_are_not_modified(eager_backend):
    logits = random_logits(2, (2, 50))
    ids = np.array([1, 2])
    before = logits.copy(), ids.copy()
    logprobs(eager_backend, logits, ids, top_n=3, temperature=0.5, top_k=5)
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(ids, before[1])


# --------------------------------------------------------------------------------------------
# JAX: one compile for every parameter value, vmap


def test_jit_traces_once_for_new_parameter_values():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    traces = []

    @jax.jit
    def run(logits, ids, params):
        traces.append(1)
        return smp.logprobs(logits, ids, top_n=5, params=params)

    logits = jnp.asarray(random_logits(10, (4, 3000)))
    ids = jnp.zeros(4, jnp.int32)
    for seed in range(4):
        params = smp.SamplingParams(**per_row_params(seed, 4))
        got = run(logits, ids, params)
        want = reference_logprobs(np.asarray(logits), np.zeros(4, np.int64), top_n=5, params=params)
        assert_matches(smp.LogprobsResult(*(np.asarray(f) for f in got)), want)
    assert len(traces) == 1


def test_vmap_matches_the_batched_call():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    logits = jnp.asarray(random_logits(11, (5, 400)))
    ids = jnp.arange(5, dtype=jnp.int32) * 7
    temperature = jnp.linspace(0.5, 1.5, 5)

    def one(row, token, t):
        return smp.logprobs(row, token, top_n=3, temperature=t, top_p=0.9)

    mapped = jax.vmap(one)(logits, ids, temperature)
    batched = smp.logprobs(logits, ids, top_n=3, temperature=temperature, top_p=0.9)
    for a, b in zip(mapped, batched, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_out_of_range_ids_under_jit_give_nan():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    got = jax.jit(smp.logprobs)(jnp.zeros((2, 4)), jnp.array([4, 1]))
    assert np.isnan(got.token[0]) and int(got.rank[0]) == 0
    assert float(got.token[1]) == pytest.approx(np.log(0.25))


# --------------------------------------------------------------------------------------------
# Bad input: clear errors, eagerly


@pytest.mark.parametrize(
    ("ids", "kw", "error", "message"),
    [
        (np.array([0, 4]), {}, ValueError, r"ids must be in \[0, 4\).*got 4 at row 1"),
        (np.array([-1, 0]), {}, ValueError, r"got -1 at row 0"),
        (np.array([0, 1, 2]), {}, ValueError, r"batch shape of the logits, \(2,\).*got shape \(3,\)"),
        (np.array([[0], [1]]), {}, ValueError, r"got shape \(2, 1\)"),
        (np.array([0.0, 1.0]), {}, TypeError, "ids must be an integer array, got dtype float"),
        (np.array([0, 1]), {"top_n": -1}, ValueError, r"top_n must be in \[0, 4\].*got -1"),
        (np.array([0, 1]), {"top_n": 5}, ValueError, r"top_n must be in \[0, 4\].*got 5"),
        (np.array([0, 1]), {"top_n": 2.0}, TypeError, "top_n must be an int"),
        (np.array([0, 1]), {"kind": "log"}, ValueError, "kind must be one of 'processed', 'raw', got 'log'"),
        (np.array([0, 1]), {"top_p": 1.5}, ValueError, "top_p must be in"),
    ],
)
def test_bad_input(eager_backend, ids, kw, error, message):
    logits = np.zeros((2, 4), np.float32)
    with pytest.raises(error, match=message):
        logprobs(eager_backend, logits, ids, **kw)


def test_bad_rows_are_reported(eager_backend):
    logits = np.array([[0.0, 1.0], [np.nan, 1.0]], np.float32)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        logprobs(eager_backend, logits, np.array([0, 0]))
