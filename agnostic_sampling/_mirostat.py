"""Mirostat v2: a truncation whose bound follows the surprise of the tokens drawn (README "Mirostat").

Per row, with state ``mu`` (in bits): keep the tokens of surprise ``-log2 q <= mu`` under the
tempered distribution ``q`` (the top token(s) when none is), draw from them renormalised, then
move ``mu`` by ``eta * (tau - s)``, ``s`` the drawn token's surprise under that renormalised
distribution: llama.cpp's ``mirostat_v2`` sampler. The truncation is the epsilon step with
``epsilon = min(2 ** -mu, 1)``; the surprise is `logprobs`' processed log-probability. The decode
loops use the same pieces (`with_bound`, `next_mu`) with ``mirostat=(tau, eta)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling import _api
from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._params import FIELDS
from agnostic_sampling._params import SamplingParams

__all__ = ["MirostatResult", "bound", "loop_options", "mirostat", "next_mu", "with_bound"]


class MirostatResult(NamedTuple):
    """What `mirostat` returns: the drawn ids and each row's next state."""

    ids: Any  # logits.shape[:-1], int64 on NumPy, int32 on JAX
    mu: Any  # logits.shape[:-1], the state for the next position (in bits)


def _check(name: str, value: Any, allowed: str, ok: Any) -> None:
    if is_tracer(value):
        return
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real number or array of them, got dtype {array.dtype}")
    if not np.all(ok(array.astype(np.float64))):
        raise ValueError(f"{name} must be {allowed}, got {array.reshape(-1)[np.argmin(ok(array))].item()!r}")


def mirostat(key: Any, logits: Any, mu: Any = None, *, tau: Any = 5.0, eta: Any = 0.1,
             temperature: Any = 1.0, backend: str | None = None) -> MirostatResult:
    """One step of mirostat v2 per row: draw a token, return it and the next state.

    Args:
        key: as for `sample`.
        logits: ``(..., V)``, as for `sample`.
        mu: each row's state in bits, a scalar or ``logits.shape[:-1]``; ``None``: ``2 * tau``
            (llama.cpp's start). Pass the returned ``mu`` at the next position.
        tau: the target surprise in bits (``>= 0``), per row allowed.
        eta: the learning rate (``>= 0``), per row allowed.
        temperature: as for `sample`, applied first (``0``: greedy; ``mu`` still moves).
        backend: ``"numpy"`` or ``"jax"`` to override detection from the type of ``logits``.

    Returns:
        A `MirostatResult` ``(ids, mu)``.

    Raises:
        ValueError: ``tau`` or ``eta`` negative or not finite, ``mu`` NaN (eagerly; under
            ``jit`` no check: a NaN ``mu`` keeps the top token(s)), or any error of `sample`.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
        >>> smp.probs(logits, epsilon=2.0 ** -2).round(3).tolist()  # what mu = 2 keeps
        [0.625, 0.375, 0.0, 0.0]
        >>> out = smp.mirostat(0, logits, mu=2.0, tau=1.5, eta=0.1)
        >>> int(out.ids) in (0, 1), round(float(out.mu), 3) in (2.082, 2.008)  # mu - 0.1 * (s - 1.5)
        (True, True)
    """
    _check("tau", tau, "a finite number >= 0", lambda a: np.isfinite(a) & (a >= 0))
    _check("eta", eta, "a finite number >= 0", lambda a: np.isfinite(a) & (a >= 0))
    if mu is None:
        mu = 2 * (np.asarray(tau) if not is_tracer(tau) else tau)
    _check("mu", mu, "a number (not NaN)", lambda a: ~np.isnan(a))
    module, array = _api._prepare(logits, backend)
    xp = np if module.__name__.endswith("numpy") else module.jnp
    mu = xp.asarray(mu)
    epsilon = bound(mu, xp)
    ids = _api.sample(key, array, temperature=temperature, epsilon=epsilon, backend=backend)
    drawn = _api.logprobs(array, ids, temperature=temperature, epsilon=epsilon, backend=backend)
    return MirostatResult(ids, next_mu(mu, drawn.token, tau, eta))


def bound(mu: Any, xp: Any) -> Any:
    """``2 ** -mu``, the epsilon step's bound: 1 (the top token(s)) once ``mu`` is below 0 or NaN."""
    return xp.where(mu >= 0, xp.exp2(-xp.where(mu >= 0, mu, 0)), 1.0)


def next_mu(mu: Any, token_logprob: Any, tau: Any, eta: Any) -> Any:
    """The state after a draw whose processed log-probability (natural log) is ``token_logprob``."""
    return mu - eta * (-token_logprob / np.log(2) - tau)


def with_bound(params: SamplingParams, mu: Any, xp: Any) -> SamplingParams:
    """``params`` with the epsilon step at ``bound(mu)``, built field by field (traced values pass)."""
    out = object.__new__(SamplingParams)
    for field in dataclasses.fields(SamplingParams):
        object.__setattr__(out, field.name, getattr(params, field.name))
    object.__setattr__(out, "epsilon", bound(mu, xp))
    return out


def loop_options(value: Any, params: Any, batch: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The decode loops' ``mirostat=(tau, eta)`` as ``(B,)`` float arrays, checked (None: off)."""
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"mirostat must be a tuple (tau, eta), got {value!r}")
    if not isinstance(params, SamplingParams):
        raise TypeError("mirostat replaces the truncation steps: it takes the keywords, not a chain")
    steps = [name for name in FIELDS
             if name not in ("temperature", "min_keep") and getattr(params, name) is not None]
    if steps:
        raise ValueError(f"mirostat replaces the truncation steps (as in llama.cpp, only temperature and the "
                         f"logit shaping apply with it); got {', '.join(steps)}")
    tau, eta = value
    _check("tau", tau, "a finite number >= 0", lambda a: np.isfinite(a) & (a >= 0))
    _check("eta", eta, "a finite number >= 0", lambda a: np.isfinite(a) & (a >= 0))
    try:
        return tuple(np.broadcast_to(np.asarray(v, np.float64), (batch,)).copy() for v in (tau, eta))
    except ValueError:
        raise ValueError(f"mirostat's tau and eta must be scalars or one per prompt row ({batch},)") from None
