"""Bad input (the README's "Bad input" table): clear errors naming the parameter, the value,
the range, the row."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import agnostic_sampling as smp

LOGITS = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, -1.0]], np.float32)


@pytest.mark.parametrize(
    ("keyword", "value", "pattern"),
    [
        ("temperature", -1.0, r"temperature must be a finite number >= 0.*got -1\.0"),
        ("temperature", float("nan"), r"temperature must be .*got nan"),
        ("temperature", np.array([1.0, np.inf]), r"temperature must be .*got inf at row 1"),
        ("top_k", -2, r"top_k must be >= 0.*got -2"),
        ("top_k", 2.5, r"top_k must be an integer, got 2\.5"),
        ("top_k", np.array([3, -1]), r"top_k must be >= 0.*got -1 at row 1"),
        ("top_p", 1.5, r"top_p must be in \[0, 1\], got 1\.5"),
        ("top_p", float("nan"), r"top_p must be in \[0, 1\], got nan"),
        ("min_p", np.array([0.1, -0.1]), r"min_p must be in \[0, 1\], got -0\.1 at row 1"),
        ("min_keep", 0, r"min_keep must be >= 1, got 0"),
        (
            "top_k",
            np.array([1, 2, 3]),
            r"top_k has shape \(3,\), which does not broadcast to the batch shape \(2,\)",
        ),
    ],
)
def test_bad_parameters(eager_backend, keyword, value, pattern):
    logits = eager_backend.array(LOGITS)
    for call in (
        lambda: smp.sample(eager_backend.key(0), logits, **{keyword: value}),
        lambda: smp.probs(logits, **{keyword: value}),
        lambda: smp.process_logits(logits, **{keyword: value}),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()


@pytest.mark.parametrize(
    ("bad", "pattern"),
    [
        (np.nan, r"logits row 1 contains NaN"),
        (np.inf, r"logits row 1 contains \+inf"),
    ],
)
def test_bad_logits_name_the_row(eager_backend, bad, pattern):
    logits = LOGITS.copy()
    logits[1, 2] = bad
    x = eager_backend.array(logits)
    for call in (
        lambda: smp.sample(eager_backend.key(0), x),
        lambda: smp.sample(eager_backend.key(0), x, top_k=2, top_p=0.9),
        lambda: smp.probs(x),
        lambda: smp.greedy(x),
    ):
        with pytest.raises(ValueError, match=pattern):
            call()


def test_row_without_finite_logit(eager_backend):
    logits = np.zeros((2, 3, 4), np.float32)
    logits[1, 2] = -np.inf
    with pytest.raises(ValueError, match=r"logits row \(1, 2\) has no finite logit"):
        smp.sample(eager_backend.key(0), eager_backend.array(logits), top_p=0.5)
    with pytest.raises(ValueError, match=r"logits row \(1, 2\) has no finite logit"):
        smp.greedy(eager_backend.array(logits))


def test_non_floating_and_empty_logits(eager_backend):
    with pytest.raises(TypeError, match="floating-point.*got dtype int"):
        smp.sample(eager_backend.key(0), eager_backend.array(np.array([1, 2, 3])))
    with pytest.raises(ValueError, match="at least one token"):
        smp.probs(eager_backend.array(np.zeros((2, 0), np.float32)))
    with pytest.raises(ValueError, match="at least one dimension"):
        smp.greedy(eager_backend.array(np.float32(1.0)))


def test_params_and_keywords_together():
    with pytest.raises(TypeError, match="either params= or sampling keywords.*top_k"):
        smp.sample(0, LOGITS, top_k=3, params=smp.SamplingParams(top_p=0.9))


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend must be one of 'numpy', 'jax', got 'torch'"):
        smp.sample(0, LOGITS, backend="torch")


def test_bad_numpy_key():
    with pytest.raises(TypeError, match="key must be a numpy.random.Generator.*got str"):
        smp.sample("seed", LOGITS)


def test_jax_key_with_numpy_logits():
    jax = pytest.importorskip("jax")
    message = "key is a JAX key but the numpy backend was chosen because logits is a numpy.ndarray"
    with pytest.raises(TypeError, match=message):
        smp.sample(jax.random.key(0), LOGITS)


def test_numpy_key_with_jax_logits():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError, match="key is a Generator but the jax backend was chosen"):
        smp.sample(np.random.default_rng(0), jnp.asarray(LOGITS))


def test_import_pulls_in_neither_jax_nor_scipy():
    code = (
        "import sys, numpy as np, agnostic_sampling as smp;"
        "smp.sample(0, np.zeros((2, 5), np.float32), top_p=0.9);"
        "bad = [m for m in ('jax', 'scipy') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
