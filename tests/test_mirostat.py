"""Mirostat v2 on every backend: against the float64 definition, chi-square, the state update, its
controller reaching the target surprise, bad input and one compile for every value."""

from __future__ import annotations

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.stats import reference_mirostat

ROWS, V = 4, 48
LOGITS = (np.random.default_rng(20261206).standard_normal((ROWS, V)) * 2).astype(np.float32)
MU = np.array([2.0, 4.0, 0.5, -1.0])  # -1: below every surprise, the top token alone


def _mirostat(backend, key, logits, mu, **kw):
    if backend.jitted:
        import jax

        out = jax.jit(lambda k, x, mu, tau, eta: smp.mirostat(k, x, mu, tau=tau, eta=eta))(
            key, backend.array(logits), backend.array(mu), kw["tau"], kw["eta"])
    else:
        out = smp.mirostat(key, backend.array(logits), backend.array(mu), **kw)
    return np.asarray(out.ids), np.asarray(out.mu)


def test_the_worked_example():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    p, _ = reference_mirostat(logits, 0, 2.0, tau=1.5, eta=0.1)
    np.testing.assert_allclose(p, [0.625, 0.375, 0, 0])  # surprise <= 2 bits: p >= 1/4
    p, _ = reference_mirostat(logits, 0, 0.5, tau=1.5, eta=0.1)
    np.testing.assert_allclose(p, [1, 0, 0, 0])  # nothing within 0.5 bits: the top token


def test_state_follows_the_drawn_token(backend):
    ids, mu = _mirostat(backend, backend.key(0), LOGITS, MU, tau=3.0, eta=0.2)
    p, expected_mu = reference_mirostat(LOGITS, ids, MU, tau=3.0, eta=0.2)
    assert (p[np.arange(ROWS), ids] > 0).all()
    assert ids[3] == np.argmax(LOGITS[3])
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_draws_follow_reference(eager_backend, dtype, seed):
    pytest.importorskip("scipy")
    from agnostic_sampling.stats import assert_samples_match

    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    if dtype == "float64" and eager_backend.name == "jax":
        pytest.skip("JAX computes float64 only with jax_enable_x64")
    logits = LOGITS[:3].astype(dtype)
    n = 20_000  # detects TV 0.03 at power 0.99 per row at the default level (checked)
    draws = np.broadcast_to(logits, (n, *logits.shape))
    ids, _ = _mirostat(eager_backend, eager_backend.key(seed), draws, np.broadcast_to(MU[:3], (n, 3)),
                       tau=3.0, eta=0.1)
    expected, _ = reference_mirostat(logits, 0, MU[:3], tau=3.0, eta=0.1)
    assert_samples_match(ids, expected, seed=seed, tv=0.03)


def test_the_controller_reaches_the_target_surprise(eager_backend):
    """Over many steps the mean surprise of the drawn tokens approaches tau (its purpose)."""
    row = LOGITS[0]
    mu, surprises = np.full(1, 6.0), []
    for t in range(600):  # one row, one Seed position per step
        ids, mu_next = _mirostat(eager_backend, smp.Seed(5, t), row[None], mu, tau=2.5, eta=0.3)
        p, _ = reference_mirostat(row[None], ids, mu, tau=2.5, eta=0.3)
        surprises.append(-np.log2(p[0, ids[0]]))
        mu = mu_next
    assert abs(np.mean(surprises[100:]) - 2.5) < 0.25


def test_one_compile_for_every_value():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    traces = []

    @jax.jit
    def step(key, x, mu, tau, eta, temperature):
        traces.append(1)
        return smp.mirostat(key, x, mu, tau=tau, eta=eta, temperature=temperature)

    for i in range(3):
        out = step(jax.random.key(i), jnp.asarray(LOGITS), jnp.asarray(MU + i), jnp.float32(2.0 + i),
                   jnp.full(ROWS, 0.1 * i), jnp.float32(0.5 + i))
        expected, mu = reference_mirostat(LOGITS, np.asarray(out.ids), MU + i, tau=2.0 + i, eta=0.1 * i,
                                          temperature=0.5 + i)
        assert (expected[np.arange(ROWS), np.asarray(out.ids)] > 0).all()
        np.testing.assert_allclose(out.mu, mu, rtol=1e-5, atol=1e-5)
    assert len(traces) == 1


def test_bad_input(eager_backend):
    logits = eager_backend.array(LOGITS)
    with pytest.raises(ValueError, match="tau must be a finite number >= 0, got -1.0"):
        smp.mirostat(eager_backend.key(0), logits, tau=-1.0)
    with pytest.raises(ValueError, match="eta must be a finite number >= 0, got nan"):
        smp.mirostat(eager_backend.key(0), logits, eta=np.array([0.1, np.nan, 0.1, 0.1]))
    with pytest.raises(ValueError, match="mu must be a number \\(not NaN\\)"):
        smp.mirostat(eager_backend.key(0), logits, mu=np.nan)
    with pytest.raises(TypeError, match="tau must be a real number"):
        smp.mirostat(eager_backend.key(0), logits, tau=1 + 2j)
    with pytest.raises(ValueError, match="does not broadcast"):
        smp.mirostat(eager_backend.key(0), logits, mu=np.ones(3))


def test_default_state_and_arrays_untouched(eager_backend):
    logits = eager_backend.array(LOGITS.copy())
    mu = np.full(ROWS, 5.0)
    ids, _ = _mirostat(eager_backend, eager_backend.key(1), LOGITS, mu, tau=2.5, eta=0.1)
    default = smp.mirostat(eager_backend.key(1), logits, tau=2.5, eta=0.1)  # mu = 2 tau
    np.testing.assert_array_equal(np.asarray(default.ids), ids)
    np.testing.assert_array_equal(np.asarray(logits), LOGITS)
    np.testing.assert_array_equal(mu, 5.0)


@pytest.mark.parametrize("stateful", [False, True])
def test_the_decode_loops_carry_the_state(eager_backend, stateful):
    """`generate` with ``mirostat=(tau, eta)`` equals `mirostat` called by hand at every position."""
    table = (np.random.default_rng(9).standard_normal((V, V)) * 2).astype(np.float32)
    table_b = eager_backend.array(table)
    prompt = np.array([[1, 2], [3, 4], [5, 6]])
    tau, eta = np.array([1.0, 2.5, 4.0]), 0.3
    common = dict(max_new_tokens=6, mirostat=(tau, eta), temperature=0.9, banned=np.arange(V) == 7,
                  return_logprobs=True)
    if stateful:
        out = smp.generate_with_state(smp.Seed(4, 0), lambda s, ids: (table_b[ids], s), 0,
                                      eager_backend.array(prompt), **common)
    else:
        out = smp.generate(smp.Seed(4, 0), lambda ids: table_b[ids], eager_backend.array(prompt), **common)
    ids, mu = prompt.copy(), 2 * tau
    for t in range(1, 7):
        bias = np.where(np.arange(V) == 7, -np.inf, 0).astype(np.float32)  # banned, by hand
        logits = table[ids[:, t]] + bias
        step = smp.mirostat(smp.Seed(4, t + 1), eager_backend.array(logits), eager_backend.array(mu),
                            tau=tau, eta=eta, temperature=0.9)
        p, _ = reference_mirostat(logits, np.asarray(step.ids), mu, tau=tau, eta=eta, temperature=0.9)
        expected = np.log(p[np.arange(3), np.asarray(step.ids)])
        np.testing.assert_allclose(np.asarray(out.logprobs)[:, t + 1], expected, rtol=1e-4, atol=1e-5)
        ids = np.concatenate([ids, np.asarray(step.ids)[:, None]], axis=1)
        mu = np.asarray(step.mu, np.float64)
    np.testing.assert_array_equal(np.asarray(out.ids), ids)


def test_the_decode_loops_refuse_truncation_with_mirostat():
    table = np.zeros((V, V), np.float32)
    with pytest.raises(ValueError, match="mirostat replaces the truncation steps.*got top_p"):
        smp.generate(0, lambda ids: table[ids], np.array([[1]]), max_new_tokens=2, mirostat=(5.0, 0.1),
                     top_p=0.9)
    with pytest.raises(TypeError, match="mirostat must be a tuple"):
        smp.generate(0, lambda ids: table[ids], np.array([[1]]), max_new_tokens=2, mirostat=5.0)
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        smp.generate(0, lambda ids: table[ids], np.array([[1]]), max_new_tokens=2, mirostat=(-1.0, 0.1))
