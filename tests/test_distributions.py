"""Every strategy, every backend, float32 and bfloat16: the draws follow `reference_probs`.

Each goodness-of-fit test makes one `sample` call on ``N`` identical rows (``N`` independent
draws) and checks them with `assert_samples_match` at its defaults: level 1e-6 per assertion
(a suite budget of 1e-3), and enough draws to detect a total-variation distance of 0.02 with
probability 0.99. The support tests run at a vocabulary of 32768 with a quarter of it at -inf.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from agnostic_sampling.stats import assert_samples_match, reference_probs  # noqa: E402

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
# One row per strategy in one batch: each row its own logits and parameters.
MIXED = {name: np.array([STRATEGIES[s].get(name, off) for s in STRATEGIES])
         for name, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))}


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.astype(pytest.importorskip("ml_dtypes").bfloat16)
    return x.astype(dtype)


def assert_away_from_boundaries(logits: np.ndarray, params: dict) -> None:
    """The test's own premise: no token is within 1e-4 (relative) of a top-p or min-p cut.

    SPEC section 3 lets a backend decide such a token either way, so the test logits avoid them.
    """
    support = reference_probs(logits, **params) > 0
    for name in ("top_p", "min_p"):
        if name in params:
            for factor in (1 - 1e-4, 1 + 1e-4):
                moved = dict(params, **{name: np.clip(np.asarray(params[name]) * factor, 0, 1)})
                assert np.array_equal(reference_probs(logits, **moved) > 0, support), (name, factor)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_draws_follow_reference(backend, strategy, dtype, seed):
    params = STRATEGIES[strategy]
    logits = cast(LOGITS, dtype)
    assert_away_from_boundaries(logits, params)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (N, V)), **params)
    assert ids.shape == (N,)
    assert_samples_match(ids, reference_probs(logits, **params), seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mixed_batch_rows_follow_reference(backend, dtype, seed):
    rows = len(STRATEGIES)
    logits = cast(np.random.default_rng(7).standard_normal((rows, V)) * 1.5, dtype)
    assert_away_from_boundaries(logits, MIXED)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (N, rows, V)), **MIXED)
    assert ids.shape == (N, rows)
    # Bonferroni inside: each row is tested at 1e-6 / rows.
    assert_samples_match(ids, reference_probs(logits, **MIXED), seed=seed)


# --------------------------------------------------------------------------------------------
# Support at a large vocabulary: not one draw outside the kept set

V_LARGE = 32_768
N_SUPPORT = 64  # the backends sort 64 x 32768 logits per call; enough to see a leak


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
@pytest.mark.parametrize("strategy", list(SUPPORT_STRATEGIES))
def test_no_draw_outside_support_at_large_vocabulary(backend, strategy, dtype, seed):
    params = SUPPORT_STRATEGIES[strategy]
    logits = large_logits(dtype)
    expected = reference_probs(logits, **params)
    ids = backend.sample(backend.key(seed), np.broadcast_to(logits, (N_SUPPORT, V_LARGE)), **params)
    outside = ids[expected[ids] == 0]
    assert outside.size == 0, f"{outside.size} of {N_SUPPORT} draws outside the support: {outside[:10]}"
    if strategy != "greedy":
        # the draws spread over the kept set, so a leak across a cut would have shown
        assert np.unique(ids).size > min(10, int((expected > 0).sum()) // 2)


def test_mixed_batch_no_draw_outside_support_at_large_vocabulary(backend, seed):
    logits = np.stack([large_logits("float32")] * len(SUPPORT_STRATEGIES))
    params = {name: np.array([s.get(name, off) for s in SUPPORT_STRATEGIES.values()])
              for name, off in (("temperature", 1.0), ("top_k", 0), ("top_p", 1.0), ("min_p", 0.0))}
    expected = reference_probs(logits, **params)
    rows = np.arange(len(SUPPORT_STRATEGIES))
    tiled = np.broadcast_to(logits, (N_SUPPORT // 4, *logits.shape))
    ids = backend.sample(backend.key(seed), tiled, **params)
    assert (expected[rows, ids] > 0).all()
