"""Speculative verification: `verify_draft` on both backends, and the kit that proves any verifier.

The kit (`stats.assert_speculative_matches`) runs at a total alpha of 1e-6 per assertion (the
suite's default) split over its three checks; each scenario draws n = 20,000 rows, enough for the
first-token test to detect a total-variation distance of 0.05 with power 0.99 (the kit raises
otherwise). The planted bugs are each shown to fail the kit, with the check that catches them
predicted to do so with power >= 0.99 at that n (`testing.power_against`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import _acceptance

pytest.importorskip("scipy")

from agnostic_sampling.stats import DEFAULT_ALPHA  # noqa: E402
from agnostic_sampling.stats import assert_speculative_matches  # noqa: E402
from agnostic_sampling.stats import reference_probs  # noqa: E402
from agnostic_sampling.testing import power_against  # noqa: E402

N = 20_000
TV = 0.05
VOCAB = 12
LEVEL = DEFAULT_ALPHA / 3  # the kit's level for each of its three checks

STRATEGIES = {
    "plain": {},
    "temperature+top-k": {"temperature": 0.7, "top_k": 5},
    "top-p": {"top_p": 0.8},
    "min-p": {"min_p": 0.1},
    "combined": {"temperature": 0.9, "top_k": 8, "top_p": 0.9, "min_p": 0.05},
}


def _scenario(k: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = (rng.standard_normal((k + 1, VOCAB)) * 1.5).astype(np.float32)
    draft = rng.dirichlet(np.full(VOCAB, 0.7), size=k)
    return target, draft


def _verifier(backend: Any, **kw: Any) -> Any:
    """Our verifier on one backend, in the kit's calling convention."""
    if backend.name == "numpy":
        return lambda seed, t, d, q: smp.verify_draft(seed, t, d, q, **kw)
    import jax
    import jax.numpy as jnp

    if not backend.jitted:
        return lambda seed, t, d, q: smp.verify_draft(jax.random.key(seed), jnp.asarray(t), jnp.asarray(d),
                                                      jnp.asarray(q), **kw)
    jitted = jax.jit(lambda key, t, d, q, params: smp.verify_draft(key, t, d, q, params=params))
    params = smp.SamplingParams(**kw)
    return lambda seed, t, d, q: jitted(jax.random.key(seed), jnp.asarray(t), jnp.asarray(d), jnp.asarray(q),
                                        params)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_the_kit_passes_our_verifier(backend, strategy, seed):
    kw = STRATEGIES[strategy]
    target, draft = _scenario(k=2)
    result = assert_speculative_matches(_verifier(backend, **kw), target, draft, N, params=kw, seed=seed,
                                        tv=TV, chunk=N)
    assert result.first.detectable_tv <= TV
    assert 0 < result.expected_acceptance_rate < 1


def test_the_kit_passes_a_deterministic_draft(backend, seed):
    target, _ = _scenario(k=1)
    one_hot = np.eye(VOCAB)[[int(np.argmax(target[0]))]]  # a greedy draft: q is one-hot
    if backend.name == "numpy":
        verifier = lambda s, t, d, q: smp.verify_draft(s, t, d, None, top_p=0.9)  # noqa: E731
    else:
        inner = _verifier(backend, top_p=0.9)
        verifier = lambda s, t, d, q: inner(s, t, d, q)  # noqa: E731
    result = assert_speculative_matches(verifier, target, one_hot, N, params={"top_p": 0.9}, seed=seed, tv=TV,
                                        chunk=N)
    p = reference_probs(target[0], top_p=0.9)
    assert result.expected_acceptance_rate == pytest.approx(p.max())


# --------------------------------------------------------------------------------------------
# The rule's edge cases, on both backends


def test_a_draft_outside_the_kept_set_is_never_accepted(backend, seed):
    target, _ = _scenario(k=3)
    kept = reference_probs(target, top_k=3) > 0
    outside = np.array([np.flatnonzero(~row)[0] for row in kept[:3]])
    q = np.zeros((3, VOCAB))
    q[np.arange(3), outside] = 1.0  # the draft only proposes removed tokens
    batch = 500
    out = _verifier(backend, top_k=3)(seed, np.broadcast_to(target, (batch, 4, VOCAB)).astype(np.float32),
                                       np.broadcast_to(outside, (batch, 3)).copy(),
                                       np.broadcast_to(q, (batch, 3, VOCAB)).astype(np.float32))
    assert np.all(np.asarray(out.num_accepted) == 0)
    assert np.all(kept[0][np.asarray(out.tokens)[:, 0]])
    assert np.all(np.asarray(out.tokens)[:, 1:] == -1)


def test_p_equal_to_q_accepts_every_draft(backend, seed):
    target, _ = _scenario(k=2)
    p = reference_probs(target, temperature=0.8).astype(np.float32)
    batch = 300
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(VOCAB, size=batch, p=p[i] / p[i].sum()) for i in range(2)], axis=1)
    logits = np.broadcast_to(target, (batch, 3, VOCAB)).astype(np.float32)
    out = _verifier(backend, temperature=0.8)(seed, logits, ids, np.broadcast_to(p[:2], (batch, 2, VOCAB)))
    assert np.all(np.asarray(out.num_accepted) == 2)
    assert np.all(np.asarray(out.num_emitted) == 3)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, :2], ids)


def test_a_draft_the_draft_model_gave_no_mass_is_accepted_when_the_target_keeps_it():
    p = np.array([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    q = np.array([[[0.0, 1.0, 0.0]]])
    decision = _acceptance.accept(p, np.array([[0]]), q, np.array([[0.999, 0.5]]), np)
    assert decision.num_accepted.tolist() == [1]


@pytest.mark.parametrize("xp_name", ["numpy", "jax"])
def test_an_empty_residual_falls_back_to_p(xp_name):
    xp = np if xp_name == "numpy" else pytest.importorskip("jax.numpy")
    p = xp.asarray(np.array([[[0.25, 0.75, 0.0], [0.1, 0.1, 0.8]]], np.float32))
    q = p[:, :1]
    # u = 1 (outside [0, 1), so only by hand) rejects although p == q: nothing of p is above q
    decision = _acceptance.accept(p, xp.asarray(np.array([[1]])), q, xp.asarray(np.array([[1.0, 0.5]])), xp)
    assert np.asarray(decision.num_accepted).tolist() == [0]
    np.testing.assert_array_equal(np.asarray(decision.residual), np.asarray(p[:, 0]))


def test_same_uniforms_same_decisions_on_both_backends():
    jnp = pytest.importorskip("jax.numpy")
    rng = np.random.default_rng(0)
    batch, k = 400, 4
    p = rng.dirichlet(np.full(VOCAB, 0.5), size=(batch, k + 1)).astype(np.float32)
    q = rng.dirichlet(np.full(VOCAB, 0.5), size=(batch, k)).astype(np.float32)
    ids = rng.integers(0, VOCAB, (batch, k))
    u = rng.random((batch, k + 1)).astype(np.float32)
    ours = _acceptance.accept(p, ids, q, u, np)
    theirs = _acceptance.accept(jnp.asarray(p), jnp.asarray(ids), jnp.asarray(q), jnp.asarray(u), jnp)
    np.testing.assert_array_equal(ours.num_accepted, np.asarray(theirs.num_accepted))
    np.testing.assert_allclose(ours.residual, np.asarray(theirs.residual), atol=1e-7)
    assert 0 < ours.num_accepted.mean() < k


def test_per_row_parameters_and_one_compile_for_every_value():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    traces = []

    @jax.jit
    def verify(key, t, d, q, params):
        traces.append(1)
        return smp.verify_draft(key, t, d, q, params=params)

    target, draft = _scenario(k=2)
    batch = 4
    t = jnp.asarray(np.broadcast_to(target, (batch, 3, VOCAB)))
    q = jnp.asarray(np.broadcast_to(draft, (batch, 2, VOCAB)).astype(np.float32))
    d = jnp.zeros((batch, 2), jnp.int32)
    for i, top_k in enumerate(([0, 1, 3, 5], [2, 2, 2, 2], [7, 0, 0, 1])):
        params = smp.SamplingParams(temperature=jnp.full(batch, 0.5 + i / 4, jnp.float32),
                                    top_k=jnp.asarray(top_k, jnp.int32),
                                    top_p=jnp.full(batch, 0.9, jnp.float32))
        out = verify(jax.random.key(i), t, d, q, params)
        kept = reference_probs(np.asarray(t), temperature=0.5 + i / 4, top_k=np.asarray(top_k)[:, None],
                               top_p=0.9) > 0
        tokens = np.asarray(out.tokens)
        last = tokens[np.arange(batch), np.asarray(out.num_accepted)]
        assert np.all(kept[np.arange(batch), np.asarray(out.num_accepted), last])
    assert len(traces) == 1


# --------------------------------------------------------------------------------------------
# Planted bugs: the kit fails each, with predicted power >= 0.99


def _buggy(bug: str, **kw: Any) -> Any:
    """A NumPy verifier with one planted bug, otherwise the standard rule."""

    def verify(seed: int, t: np.ndarray, d: np.ndarray, q: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        batch, positions, vocab = t.shape
        k = positions - 1
        skipped = "min_p" if bug == "min-p skipped" else None
        target_kw = {name: value for name, value in kw.items() if name != skipped}
        p = np.asarray(smp.probs(t, **target_kw), np.float64)
        u = rng.random((batch, positions))
        p_draft = np.take_along_axis(p[:, :k], d[..., None], -1)[..., 0]
        q_draft = np.take_along_axis(q, d[..., None], -1)[..., 0]
        if bug == "greedy acceptance":
            accepted = d == p[:, :k].argmax(-1)
        else:
            accepted = (p_draft > 0) & (u[:, :k] * q_draft < p_draft)
        n = np.cumprod(accepted, axis=-1).sum(-1)
        tokens = np.full((batch, positions), -1)
        for b in range(batch):
            tokens[b, : n[b]] = d[b, : n[b]]
            if n[b] == k:
                weight = q[b, k - 1] if bug == "bonus from q" else p[b, k]
            elif bug == "greedy acceptance":
                weight = p[b, n[b]]
            elif bug == "residual not clipped":
                weight = np.abs(p[b, n[b]] - q[b, n[b]])
            else:
                weight = np.maximum(p[b, n[b]] - q[b, n[b]], 0)
            tokens[b, n[b]] = rng.choice(vocab, p=weight / weight.sum())
        return tokens

    return verify


def _first_token_under(bug: str, p: np.ndarray, q: np.ndarray, p_bug: np.ndarray) -> np.ndarray:
    """The first emitted token's distribution under each bug (K >= 1), in closed form."""
    if bug == "min-p skipped":
        return p_bug[0]
    if bug == "residual not clipped":
        overlap = np.minimum(p[0], q[0])
        residual = np.abs(p[0] - q[0])
        return overlap + (1 - overlap.sum()) * residual / residual.sum()
    if bug == "greedy acceptance":
        top = int(np.argmax(p[0]))
        return q[0][top] * np.eye(p.shape[1])[top] + (1 - q[0][top]) * p[0]
    raise ValueError(bug)


BUGS = ["min-p skipped", "residual not clipped", "bonus from q", "greedy acceptance"]


@pytest.mark.parametrize("bug", BUGS)
def test_the_kit_fails_a_planted_bug(bug):
    kw = {"temperature": 0.9, "min_p": 0.2}
    k = 1
    target, draft = _scenario(k=k, seed=11)
    # a draft that often proposes the target's favourite, as a useful draft model does
    draft = 0.5 * np.eye(VOCAB)[[int(np.argmax(target[0]))]] + 0.5 * draft
    p = reference_probs(target, **kw)
    p_bug = reference_probs(target, temperature=0.9)
    if bug == "bonus from q":
        # after an accepted first draft the second token follows q1, not p2: the pairs' test
        overlap = np.minimum(p[0], draft[0])
        expected = np.outer(overlap, p[1]).reshape(-1)
        alternative = np.outer(overlap, draft[0]).reshape(-1)
        predicted = power_against(expected / expected.sum(), alternative / alternative.sum(),
                                  int(N * overlap.sum()), alpha=LEVEL)
    else:
        predicted = power_against(p[0], _first_token_under(bug, p, draft, p_bug), N, alpha=LEVEL)
    assert predicted >= 0.99, f"{bug}: predicted power {predicted:.3f}"
    with pytest.raises(AssertionError):
        assert_speculative_matches(_buggy(bug, **kw), target, draft, N, params=kw, seed=5, tv=TV, chunk=N)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_is_named(eager_backend):
    target, draft = _scenario(k=2)
    t = eager_backend.array(np.broadcast_to(target, (2, 3, VOCAB)).copy())
    q = eager_backend.array(np.broadcast_to(draft, (2, 2, VOCAB)).astype(np.float32))
    ids = eager_backend.array(np.zeros((2, 2), np.int32))
    key = eager_backend.key(0)
    with pytest.raises(ValueError, match=r"target_logits must have shape \(B, K \+ 1, V\)"):
        smp.verify_draft(key, t[0], ids, q)
    with pytest.raises(ValueError, match=r"draft_ids must have shape \(B, K\)"):
        smp.verify_draft(key, t, ids[:, :1], q)
    with pytest.raises(TypeError, match="draft_ids must hold integer"):
        smp.verify_draft(key, t, eager_backend.array(np.zeros((2, 2), np.float32)), q)
    with pytest.raises(ValueError, match=r"token ids in \[0, 12\), got 12"):
        smp.verify_draft(key, t, eager_backend.array(np.full((2, 2), VOCAB, np.int32)), q)
    with pytest.raises(ValueError, match=r"draft_probs must have shape \(B, K, V\)"):
        smp.verify_draft(key, t, ids, q[:, :1])
    with pytest.raises(ValueError, match="draft_probs must sum to 1"):
        smp.verify_draft(key, t, ids, q * 2)
    with pytest.raises(ValueError, match="draft_probs must be finite and >= 0"):
        smp.verify_draft(key, t, ids, -q)
    with pytest.raises(ValueError, match="top_p must be in"):
        smp.verify_draft(key, t, ids, q, top_p=1.5)
    with pytest.raises(ValueError, match=r"logits row \(1, 2\) contains NaN"):
        bad = np.broadcast_to(target, (2, 3, VOCAB)).copy()
        bad[1, 2, 0] = np.nan
        smp.verify_draft(key, eager_backend.array(bad), ids, q)


def test_the_example_runs_and_matches_the_target(capsys):
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).resolve().parent.parent / "examples" / "speculative_decode.py"),
                   run_name="__main__")
    printed = capsys.readouterr().out
    assert "per call (K = 4)" in printed
    assert ", 0 outside the target's kept set" in printed
    pvalue = float(printed.split("chi-square p-value ")[1].split(",")[0])
    assert pvalue > 1e-6
