"""Every strategy, every backend, float32 and bfloat16: the draws follow `reference_probs`.

Draws come from one `sample` call on many identical rows (``N`` independent draws per row) and
are checked with `assert_samples_match` at its defaults: level 1e-6 per assertion (a suite
budget of 1e-3) and enough draws to detect a total-variation distance of 0.02 with probability
0.99. Per backend and dtype, one call draws a batch that holds every strategy as a row with
per-row parameters; each strategy's test checks its row, and the mixed-batch test all rows
together. (One call, because on JAX each distinct call structure costs a compile of seconds.)
Scalar parameters, as users usually pass them, get one call per strategy in float32. The
support tests run at a vocabulary of 32768 with a quarter of it at -inf.
"""

from __future__ import annotations

import numpy as np
import pytest

from agnostic_sampling.stats import assert_samples_match
from agnostic_sampling.stats import reference_probs
from agnostic_sampling.testing import seed_for

pytest.importorskip("scipy")  # the checks need SciPy; CI also runs a NumPy-only suite

V = 32
N = 65_536  # detects TV 0.02 at power 0.99 with up to 27 cells, even at level 1e-6 / 6 per row
LOGITS = (np.random.default_rng(20261126).standard_normal(V) * 1.5).astype(np.float32)

STRATEGIES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.7),
    "top_k": dict(top_k=8),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.05),
    "combined": dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02),
}
OFF = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}


def per_row(strategies: dict[str, dict]) -> dict[str, np.ndarray]:
    """The strategies as one batch: per-row parameter arrays, one row per strategy."""
    return {name: np.array([params.get(name, off) for params in strategies.values()])
            for name, off in OFF.items()}


MIXED = per_row(STRATEGIES)
# each row its own logits: the first is LOGITS, the others random rows of the same scale
MIXED_LOGITS = np.concatenate([LOGITS[None], np.random.default_rng(7).standard_normal((5, V)) * 1.5])


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.astype(pytest.importorskip("ml_dtypes").bfloat16)
    return x.astype(dtype)


def assert_away_from_boundaries(logits: np.ndarray, params: dict) -> None:
    """The test's own premise: no token is within 1e-4 (relative) of a top-p or min-p cut.

    The README's "Semantics" section lets a backend decide such a token either way, so the test
    logits avoid them.
    """
    support = reference_probs(logits, **params) > 0
    for name in ("top_p", "min_p"):
        if name in params:
            for factor in (1 - 1e-4, 1 + 1e-4):
                moved = dict(params, **{name: np.clip(np.asarray(params[name]) * factor, 0, 1)})
                assert np.array_equal(reference_probs(logits, **moved) > 0, support), (name, factor)


_BATCHES: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]] = {}


def mixed_batch(backend, dtype: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(draws (N, rows), expected (rows, V), seed)`` of the batch, drawn once per backend and
    dtype in this session and shared by the tests that check it."""
    if backend.jitted and dtype == "bfloat16":
        # the jitted program is the eager one traced once more; bfloat16 is cast inside both
        pytest.skip("bfloat16 runs eagerly on JAX; under jit only float32 (each is a compile)")
    if (backend.id, dtype) not in _BATCHES:
        logits = cast(MIXED_LOGITS, dtype)
        assert_away_from_boundaries(logits, MIXED)
        seed = seed_for(f"tests/test_distributions.py::mixed_batch[{backend.id}-{dtype}]")
        ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (N, *logits.shape)), **MIXED)
        assert ids.shape == (N, len(STRATEGIES))
        _BATCHES[backend.id, dtype] = ids, reference_probs(logits, **MIXED), seed
    return _BATCHES[backend.id, dtype]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_strategy_follows_reference(backend, strategy, dtype):
    ids, expected, seed = mixed_batch(backend, dtype)
    row = list(STRATEGIES).index(strategy)
    assert_samples_match(ids[:, row], expected[row], seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mixed_batch_follows_reference(backend, dtype):
    ids, expected, seed = mixed_batch(backend, dtype)
    # one assertion for the batch: Bonferroni inside, each row at level 1e-6 / rows
    assert_samples_match(ids, expected, seed=seed)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_scalar_parameters_follow_reference(eager_backend, strategy, seed):
    # Eager only, and on JAX three strategies: there every call structure is a compile of
    # seconds. The batch tests above run every strategy, jitted too; scalars differ from per-row
    # arrays only in broadcasting, which tests/test_pipeline.py checks against the oracle.
    backend = eager_backend
    if backend.name == "jax" and strategy not in ("temperature", "top_p", "combined"):
        pytest.skip("covered by the batch tests on JAX")
    params = STRATEGIES[strategy]
    assert_away_from_boundaries(LOGITS, params)
    ids = backend.sample(backend.key(seed), np.broadcast_to(LOGITS, (N, V)), **params)
    assert ids.shape == (N,)
    assert_samples_match(ids, reference_probs(LOGITS, **params), seed=seed)


# --------------------------------------------------------------------------------------------
# Support at a large vocabulary: not one draw outside the kept set

V_LARGE = 32_768
N_SUPPORT = 32  # draws per strategy; the backends sort up to 192 x 32768 logits per call


def large_logits(dtype: str) -> np.ndarray:
    """Flat logits, so that the tokens just outside every cut carry much of the mass, with a few
    spikes and a quarter of the vocabulary at -inf (never drawable, not even by temperature)."""
    rng = np.random.default_rng(32768)
    x = rng.standard_normal(V_LARGE) * 0.3
    x[rng.choice(V_LARGE, 16, replace=False)] += 3
    x[rng.choice(V_LARGE, V_LARGE // 4, replace=False)] = -np.inf
    return cast(x, dtype)


SUPPORT_STRATEGIES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=2.0),
    "top_k": dict(top_k=40),
    "top_p": dict(top_p=0.5),
    "min_p": dict(min_p=0.3),
    "combined": dict(temperature=0.9, top_k=5000, top_p=0.7, min_p=0.1),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_no_draw_outside_support_at_large_vocabulary(backend, dtype, seed):
    params = per_row(SUPPORT_STRATEGIES)
    logits = np.broadcast_to(large_logits(dtype), (len(SUPPORT_STRATEGIES), V_LARGE))
    expected = reference_probs(logits, **params)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (N_SUPPORT, *logits.shape)), **params)
    for row, strategy in enumerate(SUPPORT_STRATEGIES):
        drawn = ids[:, row]
        outside = drawn[expected[row, drawn] == 0]
        assert outside.size == 0, f"{strategy}: {outside.size} draws outside the support: {outside}"
        if strategy != "greedy":
            # the draws spread over the kept set, so a leak across a cut would have shown
            assert np.unique(drawn).size > min(8, int((expected[row] > 0).sum()) // 2), strategy


@pytest.mark.parametrize("strategy", ["top_p", "combined"])
def test_scalar_parameters_no_draw_outside_support_at_large_vocabulary(eager_backend, strategy, seed):
    backend = eager_backend
    params = SUPPORT_STRATEGIES[strategy]
    logits = large_logits("float32")
    expected = reference_probs(logits, **params)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (N_SUPPORT, V_LARGE)), **params)
    assert (expected[ids] > 0).all(), ids[expected[ids] == 0]


# --------------------------------------------------------------------------------------------
# The `verify` command's logic


def test_run_verification_passes_and_tabulates(eager_backend):
    from agnostic_sampling._verify import STRATEGIES
    from agnostic_sampling._verify import format_table
    from agnostic_sampling._verify import run_verification

    calls = []
    # every strategy on NumPy; on JAX one row plus the batch (each strategy is a compile there)
    names = [*STRATEGIES, "mixed batch"] if eager_backend.name == "numpy" else ["combined", "mixed batch"]
    rows = run_verification(eager_backend.name, n=5000, progress=lambda *a: calls.append(a),
                            strategies=names)
    assert [row.strategy for row in rows] == names
    assert all(row.passed and row.out_of_support == 0 and row.backend == eager_backend.name for row in rows)
    assert calls[0] == (0, len(names), names[0]) and calls[-1] == (len(names), len(names), "mixed batch")
    assert len(calls) == len(names) + 1
    table = format_table(rows)
    assert f"all {len(names)} rows pass" in table and "mixed batch" in table and "detectable TV" in table


def test_run_verification_fails_a_wrong_sampler(monkeypatch):
    import agnostic_sampling as smp
    from agnostic_sampling._verify import format_table
    from agnostic_sampling._verify import run_verification

    real = smp.sample

    def too_hot(key, logits, **params):  # a planted bug: temperature 50% too high
        return real(key, logits, **dict(params, temperature=np.asarray(params.get("temperature", 1.0)) * 1.5))

    monkeypatch.setattr(smp, "sample", too_hot)
    rows = {row.strategy: row for row in run_verification("numpy", n=5000)}
    assert rows["greedy"].passed  # 0 * 1.5 is still greedy
    assert not rows["temperature"].passed and not rows["mixed batch"].passed
    assert "FAIL" in format_table(list(rows.values()))
    with pytest.raises(ValueError, match="at least 1000"):
        run_verification("numpy", n=10)
    with pytest.raises(ValueError, match="strategies must be names among greedy, temperature"):
        run_verification("numpy", strategies=["nucleus"])
