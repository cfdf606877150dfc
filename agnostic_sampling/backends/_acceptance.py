"""The speculative-decoding acceptance rule, written once for NumPy and JAX arrays.

Both backends compute the target's processed distribution ``p`` with their own pipeline (the one
behind `probs`), draw the uniforms from their own keys, and hand both to `accept`, which needs only
the array functions NumPy and ``jax.numpy`` share (``xp``). Nothing here sorts or branches on
values, so under ``jax.jit`` it is one static program.
"""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

from agnostic_sampling._chain import Chain
from agnostic_sampling._chain import Step
from agnostic_sampling._params import FIELDS
from agnostic_sampling._params import SamplingParams


class Decision(NamedTuple):
    """What the rule decides before the last draw (all per row of the batch)."""

    num_accepted: Any  # (B,) leading drafts accepted, in [0, K]
    residual: Any  # (B, V) weights of the last token: max(p - q, 0) at a rejection, p after K accepts


def _repeated(value: Any, positions: int, xp: Any) -> Any:
    if value is not None and not isinstance(value, (int, float)):
        value = xp.asarray(value)
        if value.ndim:
            value = xp.broadcast_to(value[..., None], (*value.shape, positions))
    return value


def per_position(params: SamplingParams | Chain, positions: int, xp: Any) -> SamplingParams | Chain:
    """Each row's parameters repeated over its ``positions`` target positions (scalars stay scalars).

    A field of batch shape ``(B,)`` becomes ``(B, positions)``; a scalar or ``None`` is unchanged,
    so a concretely-off step is still left out of the compiled program. A `Chain` keeps its order.
    """
    if isinstance(params, Chain):
        steps = tuple(Step(step.kind, tuple(_repeated(v, positions, xp) for v in step.values))
                      for step in params.steps)
        return Chain(steps, _repeated(params.min_keep, positions, xp))
    return SamplingParams(**{name: _repeated(getattr(params, name), positions, xp) for name in FIELDS})


def accept(p: Any, draft_ids: Any, draft_probs: Any | None, uniform: Any, xp: Any) -> Decision:
    """The standard rule: accept draft ``x`` at position ``i`` with probability ``min(1, p(x) / q(x))``.

    Args:
        p: ``(B, K + 1, V)`` the target's processed probabilities at each position.
        draft_ids: ``(B, K)`` the drafted tokens.
        draft_probs: ``(B, K, V)`` the draft's probabilities, or ``None`` for a deterministic
            draft (``q`` one-hot at the drafted token).
        uniform: ``(B, K + 1)`` uniforms in ``[0, 1)``; the first ``K`` decide acceptance.
        xp: ``numpy`` or ``jax.numpy``.

    Returns:
        The accepted count and the weights of the token emitted after the accepted drafts.

    A draft is accepted iff ``u * q(x) < p(x)``: never when ``p(x) == 0`` (a token outside the
    kept set), always when ``p == q`` (``u < 1``) or ``q(x) == 0`` with ``p(x) > 0``.
    """
    batch, positions, vocab = p.shape
    k = positions - 1
    rows = xp.arange(batch)
    p_draft = p[rows[:, None], xp.arange(k)[None, :], draft_ids]  # (B, K) gathers, no pass over V
    q_draft = 1 if draft_probs is None else draft_probs[rows[:, None], xp.arange(k)[None, :], draft_ids]
    accepted = (p_draft > 0) & (uniform[:, :k] * q_draft < p_draft)
    num_accepted = xp.sum(xp.cumprod(accepted.astype(xp.int32), axis=-1), axis=-1).astype(xp.int32)

    p_next = p[rows, num_accepted]  # (B, V): where the last token is drawn
    if k == 0:
        return Decision(num_accepted, p_next)
    rejected = (num_accepted < k)[:, None]
    rejected_at = xp.minimum(num_accepted, k - 1)
    if draft_probs is None:
        q_next = (xp.arange(vocab)[None, :] == draft_ids[rows, rejected_at][:, None]) & rejected
    else:
        q_next = xp.where(rejected, draft_probs[rows, rejected_at], 0)
    # After K accepts q_next is 0, so the residual is p itself.
    residual = xp.maximum(p_next - q_next.astype(p.dtype), 0)
    # Rounding can leave nothing of p above q (p == q up to an ulp): then the residual is p.
    empty = xp.sum(residual, axis=-1, keepdims=True) <= 0
    return Decision(num_accepted, xp.where(empty, p_next, residual))


def emitted(draft_ids: Any, num_accepted: Any, last: Any, xp: Any) -> Any:
    """``(B, K + 1)`` tokens: the accepted drafts, then ``last``, then ``-1``."""
    batch, k = draft_ids.shape
    position = xp.arange(k + 1)[None, :]
    padded = xp.concatenate([draft_ids, xp.zeros((batch, 1), draft_ids.dtype)], axis=1)
    n = num_accepted[:, None]
    last = last[:, None].astype(draft_ids.dtype)
    return xp.where(position < n, padded, xp.where(position == n, last, -1))
