"""Self-tests of the checker: sizing, pooling, the assertion, planted bugs and calibration."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling import stats
from agnostic_sampling.stats import DEFAULT_ALPHA
from agnostic_sampling.stats import assert_samples_match
from agnostic_sampling.stats import chisquare_gof
from agnostic_sampling.stats import detectable_tv
from agnostic_sampling.stats import reference_probs
from agnostic_sampling.stats import required_samples
from agnostic_sampling.testing import power_against
from agnostic_sampling.testing import seed_for

pytest.importorskip("scipy")  # the checks need SciPy; CI also runs a NumPy-only suite

LOGITS = (np.random.default_rng(20261126).standard_normal(32) * 1.5).astype(np.float32)
HEAVY = np.random.default_rng(1000).standard_normal(1000) * 2  # a long tail of small tokens


def batch_pvalues(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """`chisquare_gof` p-values of many count vectors (rows of ``counts``, equal totals) at once.

    The cells depend only on ``expected`` and the total, so one `chisquare_gof` call gives them
    and ``scipy.stats.power_divergence`` runs on every row together; a row with a draw outside
    the support gets p-value 0, as in `chisquare_gof`. Checked against it on the first 10 rows.
    """
    from scipy import stats as st

    first = chisquare_gof(counts[0], expected, counts=True)
    membership = np.zeros((expected.size, len(first.cells)))
    for c, tokens in enumerate(first.cells):
        membership[tokens, c] = 1
    cell_counts = counts @ membership
    inside = counts[:, expected == 0].sum(axis=1) == 0
    pvalues = np.zeros(counts.shape[0])
    if inside.any():
        pvalues[inside] = st.power_divergence(cell_counts[inside], first.expected, axis=1).pvalue
    for row in range(min(counts.shape[0], 10)):
        assert chisquare_gof(counts[row], expected, counts=True).pvalue == pytest.approx(pvalues[row])
    return pvalues


def simulated_pvalues(rng: np.random.Generator, alternative: np.ndarray, expected: np.ndarray, n: int,
                      reps: int) -> np.ndarray:
    """P-values of ``reps`` tests of ``n`` draws from ``alternative`` (multinomial counts)."""
    return batch_pvalues(rng.multinomial(n, alternative, size=reps), expected)


def rejections(rng: np.random.Generator, alternative: np.ndarray, expected: np.ndarray, n: int,
               alpha: float, reps: int) -> int:
    """How many of ``reps`` simulated tests reject at ``alpha``."""
    return int((simulated_pvalues(rng, alternative, expected, n, reps) < alpha).sum())


def assert_rate_near(hits: int, reps: int, predicted: float, slack: float = 0.02) -> None:
    """Simulated rate within 4 binomial standard errors (plus ``slack`` for the asymptotics)."""
    rate = hits / reps
    tolerance = 4 * np.sqrt(predicted * (1 - predicted) / reps) + slack
    assert abs(rate - predicted) <= tolerance, (rate, predicted, tolerance)


def smallest_n(expected: np.ndarray, alternative: np.ndarray, power: float, alpha: float) -> int:
    n = 64
    while power_against(expected, alternative, n, alpha=alpha) < power:
        n = int(n * 1.1) + 1
    return n


# --------------------------------------------------------------------------------------------
# Sizing


def test_required_samples_reproduces_the_issue_figure():
    # tv 0.01, power 0.99, alpha 1e-6, 20 cells: "about 214,000 draws"
    assert required_samples(0.01, power=0.99, alpha=1e-6, cells=20) == 214_252
    assert required_samples(0.02) == pytest.approx(214_252 / 4, rel=1e-4)
    assert required_samples(0.01, cells=100) > required_samples(0.01, cells=20)
    assert required_samples(0.01, alpha=1e-3) < required_samples(0.01, alpha=1e-6)


def test_detectable_tv_inverts_required_samples():
    for tv, cells in ((0.01, 20), (0.05, 3), (0.002, 500)):
        n = required_samples(tv, cells=cells)
        assert detectable_tv(n, cells=cells) <= tv < detectable_tv(n - 1, cells=cells) * 1.0001
    # one-token support: a single draw elsewhere fails, so 1 - (1 - tv)^n = power
    assert (1 - detectable_tv(460, cells=1)) ** 460 == pytest.approx(0.01)


@pytest.mark.parametrize("bad", [dict(tv=0), dict(tv=1.5), dict(tv=0.1, cells=1), dict(tv=0.1, power=1.0),
                                 dict(tv=0.1, alpha=0.0), dict(tv=0.1, alpha=0.5, power=0.4)])
def test_required_samples_rejects_bad_arguments(bad):
    tv = bad.pop("tv")
    with pytest.raises(ValueError):
        required_samples(tv, **bad)


def worst_case(tv: float, cells: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Equiprobable cells and the deviation of total variation ``tv`` that is hardest to see:
    proportional to p on two halves of equal mass, Pearson divergence exactly 4 tv^2."""
    p = np.full(cells, 1 / cells)
    sign = np.where(np.arange(cells) < cells // 2, 1.0, -1.0)
    return p, p * (1 + 2 * tv * sign)


def test_required_samples_achieves_its_power_by_simulation():
    # 1000 simulated tests at the predicted size: power 0.99 means about 10 misses
    p, a = worst_case(0.01)
    assert 0.5 * np.abs(a - p).sum() == pytest.approx(0.01)
    n = required_samples(0.01, power=0.99, alpha=1e-6, cells=20)
    hits = rejections(np.random.default_rng(1), a, p, n, 1e-6, reps=1000)
    assert_rate_near(hits, 1000, 0.99, slack=0.005)
    # and at half power, where a miscalibration would show most
    n = required_samples(0.01, power=0.5, alpha=1e-3, cells=20)
    hits = rejections(np.random.default_rng(2), a, p, n, 1e-3, reps=1000)
    assert_rate_near(hits, 1000, 0.5)


def test_worst_case_is_the_worst():
    # at the same TV, a deviation concentrated on two cells is detected with more draws to spare
    p, a = worst_case(0.01)
    n = required_samples(0.01, cells=20)
    assert power_against(p, a, n) == pytest.approx(0.99, abs=1e-3)
    concentrated = p.copy()
    concentrated[[0, 1]] += [0.01, -0.01]
    assert power_against(p, concentrated, n) > 0.999


# --------------------------------------------------------------------------------------------
# chisquare_gof


def test_result_fields_in_scipy_style():
    p = reference_probs(LOGITS)
    draws = np.random.default_rng(0).choice(32, size=20_000, p=p)
    result = chisquare_gof(draws, p)
    assert (result.n, result.out_of_support, result.dof) == (20_000, 0, len(result.cells) - 1)
    assert 0 < result.pvalue <= 1 and result.statistic >= 0
    assert result.observed.sum() == 20_000 and result.expected.sum() == pytest.approx(20_000)
    assert result.counts.shape == (32,)
    assert result.detectable_tv == pytest.approx(detectable_tv(20_000, cells=len(result.cells)))
    from scipy.stats import chisquare

    assert result.pvalue == pytest.approx(chisquare(result.observed, result.expected).pvalue)


def test_counts_and_draws_give_the_same_result():
    p = reference_probs(LOGITS, top_k=10)
    draws = np.random.default_rng(3).choice(32, size=5000, p=p)
    a = chisquare_gof(draws, p)
    b = chisquare_gof(np.bincount(draws, minlength=32), p, counts=True)
    assert (a.statistic, a.pvalue, a.dof) == (b.statistic, b.pvalue, b.dof)


@pytest.mark.parametrize("n", [200, 1000, 10_000, 300_000])
def test_cells_come_from_expected_and_n_only(n):
    p = reference_probs(HEAVY, min_p=1e-4)
    rng = np.random.default_rng(n)
    first = chisquare_gof(rng.choice(p.size, size=n, p=p), p)
    second = chisquare_gof(rng.choice(p.size, size=n, p=np.roll(p, 1)), p)
    assert [c.tolist() for c in first.cells] == [c.tolist() for c in second.cells]
    assert min(first.expected) >= 50 * (1 - 1e-9)
    members = np.concatenate(first.cells)
    assert sorted(members.tolist()) == np.flatnonzero(p > 0).tolist()  # a partition of the support
    singles = [int(c[0]) for c in first.cells if c.size == 1]
    assert set(singles) >= set(np.flatnonzero(n * p >= 50).tolist())  # top tokens are their own cells


def test_too_few_samples_for_two_cells_says_how_many_are_needed():
    p = reference_probs(LOGITS)
    with pytest.raises(ValueError, match=r"too few samples.*at least (\d+) draws") as info:
        chisquare_gof(np.zeros(60, np.int64), p)
    need = int(info.value.args[0].rsplit("at least ", 1)[1].split()[0])
    assert chisquare_gof(np.zeros(need, np.int64), p).dof >= 1
    with pytest.raises(ValueError, match="too few samples"):
        chisquare_gof(np.zeros(need - 1, np.int64), p)


def test_out_of_support_and_out_of_range_draws_give_pvalue_zero():
    p = np.array([0.5, 0.5, 0.0])
    for bad in (2, -1, 3):
        draws = np.r_[np.tile([0, 1], 5000), bad]
        result = chisquare_gof(draws, p)
        assert (result.out_of_support, result.pvalue, result.statistic) == (1, 0.0, np.inf)


def test_one_token_support_is_an_exact_test():
    p = np.array([0.0, 1.0, 0.0])
    assert chisquare_gof(np.ones(10, np.int64), p).pvalue == 1.0
    assert chisquare_gof(np.r_[np.ones(10, np.int64), 0], p).pvalue == 0.0


@pytest.mark.parametrize("observed, expected, counts, error", [
    (np.zeros(5, np.int64), [0.5, 0.6], False, ValueError),
    (np.zeros(5, np.int64), [1.5, -0.5], False, ValueError),
    (np.zeros(5), [0.5, 0.5], False, TypeError),
    (np.array([1, 2, 3]), [0.5, 0.5], True, ValueError),
    (np.array([1, -2]), [0.5, 0.5], True, ValueError),
    (np.zeros(5, np.int64), [[0.5, 0.5]], False, ValueError),
])
def test_chisquare_gof_rejects_malformed_input(observed, expected, counts, error):
    with pytest.raises(error):
        chisquare_gof(observed, expected, counts=counts)


# --------------------------------------------------------------------------------------------
# assert_samples_match


def test_passes_exact_draws_including_batches():
    rng = np.random.default_rng(4)
    p = reference_probs(np.stack([LOGITS, LOGITS[::-1], LOGITS * 0.3]), top_p=np.array([1, 0.9, 0.7]))
    draws = np.stack([rng.choice(32, size=80_000, p=row) for row in p], axis=1)
    results = assert_samples_match(draws, p, seed=4)
    assert len(results) == 3
    assert all(r.alpha == pytest.approx(DEFAULT_ALPHA / 3) for r in results)  # Bonferroni
    # leading batch dimensions: (n, 3, 1) against (3, 1, V)
    assert len(assert_samples_match(draws[:, :, None], p[:, None, :], seed=4)) == 3


def test_failure_lists_worst_cells_and_seed():
    p = reference_probs(LOGITS, top_k=8)
    wrong = reference_probs(LOGITS, top_k=8, temperature=1.3)
    draws = np.random.default_rng(5).choice(32, size=60_000, p=wrong)
    with pytest.raises(AssertionError) as info:
        assert_samples_match(draws, p, seed=1234)
    message = str(info.value)
    assert "replay with seed=1234" in message and "AGNOSTIC_SAMPLING_SEED_OFFSET" in message
    assert "worst cells" in message and "residual" in message and "p-value" in message


def test_zero_tolerance_for_one_draw_outside_support():
    p = reference_probs(LOGITS, top_k=8)
    draws = np.random.default_rng(6).choice(32, size=100_000, p=p)
    outside = int(np.flatnonzero(p == 0)[0])
    draws[12345] = outside
    with pytest.raises(AssertionError, match=rf"1 draws outside the support \(tokens: {outside} x1\)"):
        assert_samples_match(draws, p)


def test_token_expected_64_times_never_drawn_fails():
    # "too perfect" counts, except one token expected 64 times that never appears: its mass is
    # spread over the others so that the chi-square alone would not reject at alpha 1e-6
    p = np.full(1000, 0.9989 / 999)
    p[0] = 0.0011  # expected 70.4 times in 64,000 draws
    counts = np.round(64_000 * p).astype(np.int64)
    counts[0] = 0
    counts[1 : 1 + 64_000 - counts.sum()] += 1
    draws = np.repeat(np.arange(1000), counts)
    assert chisquare_gof(draws, p).pvalue >= DEFAULT_ALPHA
    with pytest.raises(AssertionError, match="tokens never drawn despite an expected count >= 64: 0 "):
        assert_samples_match(draws, p, tv=0.2)


def test_nan_pvalue_fails(monkeypatch):
    p = reference_probs(LOGITS)
    draws = np.random.default_rng(7).choice(32, size=80_000, p=p)
    real = stats.chisquare_gof

    def nan_pvalue(*args, **kwargs):
        import dataclasses

        return dataclasses.replace(real(*args, **kwargs), pvalue=float("nan"))

    # the module whose assert_samples_match calls it (stats re-exports both)
    monkeypatch.setattr(importlib.import_module("agnostic_sampling._chisquare"), "chisquare_gof", nan_pvalue)
    with pytest.raises(AssertionError, match="p-value nan"):
        assert_samples_match(draws, p)


def test_underpowered_pass_is_an_error():
    p = reference_probs(LOGITS)
    draws = np.random.default_rng(8).choice(32, size=5000, p=p)
    with pytest.raises(ValueError, match=r"underpowered.*use about \d+ draws"):
        assert_samples_match(draws, p, tv=0.02)
    assert_samples_match(draws, p, tv=0.1)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="samples must have shape"):
        assert_samples_match(np.zeros((10, 2), np.int64), np.full((3, 4), 0.25))


# --------------------------------------------------------------------------------------------
# Planted bugs: each is caught at the size where the predicted power is 0.99, and the power
# predicted at a smaller size matches a simulation.


def seed_top_p(probabilities: np.ndarray, top_p: float) -> np.ndarray:
    """The seed tutorial's nucleus: removes every token whose inclusive cumulative mass exceeds
    ``top_p``, which drops the token that crosses ``top_p`` (the off-by-one)."""
    order = np.argsort(-probabilities, kind="stable")
    remove = np.cumsum(probabilities[order]) > top_p
    remove[0] = False
    out = probabilities.copy()
    out[order[remove]] = 0
    return out / out.sum()


def leak(expected: np.ndarray, token: int, mass: float) -> np.ndarray:
    out = (1 - mass) * expected
    out[token] += mass
    return out


def tail_bias(expected: np.ndarray, tail_mass: float, factor: float) -> np.ndarray:
    """Scale the least probable tokens holding ``tail_mass`` by ``factor`` (then renormalise)."""
    order = np.argsort(expected, kind="stable")
    tail = order[np.cumsum(expected[order]) <= tail_mass]
    out = expected.copy()
    out[tail] *= factor
    return out / out.sum()


PLANTED = {
    # temperature 3% too high
    "temperature": lambda: (reference_probs(LOGITS, temperature=0.7),
                            reference_probs(LOGITS, temperature=0.7 * 1.03)),
    "seed_top_p": lambda: (reference_probs(LOGITS, top_p=0.8), seed_top_p(reference_probs(LOGITS), 0.8)),
    # 0.1% of the draws land on the token just outside the top-k set
    "leaked_token": lambda: (reference_probs(LOGITS, top_k=8),
                             leak(reference_probs(LOGITS, top_k=8), int(np.argsort(-LOGITS)[8]), 1e-3)),
    # the tail holding 30% of the mass drawn 10% too rarely
    "tail_bias": lambda: (reference_probs(HEAVY), tail_bias(reference_probs(HEAVY), 0.3, 0.9)),
}


@pytest.mark.parametrize("bug", list(PLANTED))
def test_planted_bug_caught_at_predicted_size(bug, seed):
    expected, buggy = PLANTED[bug]()
    n = smallest_n(expected, buggy, 0.99, DEFAULT_ALPHA)
    assert n < 300_000  # the bugs are sized to be cheap to catch
    draws = np.random.default_rng(seed).choice(expected.size, size=n, p=buggy)
    with pytest.raises(AssertionError, match="do not match"):
        assert_samples_match(draws, expected, tv=1.0, seed=seed)


@pytest.mark.parametrize("bug", list(PLANTED))
def test_planted_bug_power_matches_prediction(bug, seed):
    expected, buggy = PLANTED[bug]()
    alpha, reps = 1e-3, 1000
    n = smallest_n(expected, buggy, 0.5, alpha)
    predicted = power_against(expected, buggy, n, alpha=alpha)
    hits = rejections(np.random.default_rng(seed), buggy, expected, n, alpha, reps)
    assert_rate_near(hits, reps, predicted)


def test_planted_temperature_bug_in_a_real_sampler(seed):
    # the numpy sampler run with a temperature 3% off: the checker must notice
    expected = reference_probs(LOGITS, temperature=0.7)
    n = smallest_n(expected, reference_probs(LOGITS, temperature=0.721), 0.99, DEFAULT_ALPHA)
    ids = smp.sample(seed, np.broadcast_to(LOGITS, (n, 32)), temperature=0.721)
    with pytest.raises(AssertionError, match="p-value"):
        assert_samples_match(ids, expected, tv=1.0, seed=seed)


# --------------------------------------------------------------------------------------------
# Seeds and imports


def test_seed_for_is_stable_and_offset_by_environment(monkeypatch):
    monkeypatch.delenv(stats.SEED_OFFSET_ENV, raising=False)
    import zlib

    assert seed_for("tests/x.py::t") == zlib.crc32(b"tests/x.py::t")
    monkeypatch.setenv(stats.SEED_OFFSET_ENV, "17")
    assert seed_for("tests/x.py::t") == (zlib.crc32(b"tests/x.py::t") + 17) % 2**32


def test_importing_stats_testing_and_verify_does_not_import_scipy():
    code = ("import sys, agnostic_sampling.stats, agnostic_sampling.testing, agnostic_sampling._verify;"
            "sys.exit(1 if 'scipy' in sys.modules or 'jax' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# Calibration: correct samplers fail at the nominal rate


@pytest.mark.slow
def test_false_alarm_rate_is_nominal():
    """100,000 exact multinomial samples of n = 5000 draws over a 100-token heavy-tailed
    distribution (35 cells): the false-alarm rate at levels 1e-2, 1e-3 and 1e-4 is within
    binomial error of nominal (1000, 100 and 10 expected alarms). About 5 s on one core."""
    from scipy import stats as st

    p = reference_probs(HEAVY[:100])
    rng = np.random.default_rng(seed_for("calibration"))
    reps = 100_000
    pvalues = np.concatenate([simulated_pvalues(rng, p, p, 5000, 10_000) for _ in range(reps // 10_000)])
    for alpha in (1e-2, 1e-3, 1e-4):
        alarms = int((pvalues < alpha).sum())
        assert st.binomtest(alarms, reps, alpha).pvalue > 1e-3, (alpha, alarms, reps * alpha)


@pytest.mark.slow
def test_numpy_sampler_false_alarm_rate():
    """The real NumPy sampler: 250 tests of 2000 draws each (the combined pipeline, V = 32), all
    drawn in one call. The p-values are uniform (Kolmogorov-Smirnov) and the rate at level 0.05
    is within binomial error (12.5 expected alarms). About 4 s."""
    from scipy import stats as st

    params = dict(temperature=0.8, top_k=20, top_p=0.9, min_p=0.02)
    expected = reference_probs(LOGITS, **params)
    tests, n = 250, 2000
    ids = smp.sample(seed_for("numpy calibration"), np.broadcast_to(LOGITS, (tests * n, 32)), **params)
    offsets = np.repeat(np.arange(tests) * 32, n)
    counts = np.bincount(ids + offsets, minlength=tests * 32).reshape(tests, 32)
    pvalues = batch_pvalues(counts, expected)
    alarms = int((pvalues < 0.05).sum())
    assert st.binomtest(alarms, tests, 0.05).pvalue > 1e-3, alarms
    assert st.kstest(pvalues, "uniform").pvalue > 1e-3


def test_docstring_examples_run():
    import doctest

    from agnostic_sampling import _chisquare
    from agnostic_sampling import _reference
    from agnostic_sampling import _sizing
    from agnostic_sampling import _speculative_check
    from agnostic_sampling import _verify as verify
    from agnostic_sampling import testing

    # stats is a face: its examples live with the code, in the private modules
    for module, least in ((_chisquare, 2), (_sizing, 2), (_speculative_check, 1), (_reference, 1),
                          (testing, 3)):
        results = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert results.attempted >= least and results.failed == 0, module.__name__
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(verify.format_table, "format_table", globs={}):
        runner.run(test)
    # (run_verification's example, a 7-strategy run, is what test_distributions.py runs as well)
    assert runner.summarize(verbose=False).failed == 0
