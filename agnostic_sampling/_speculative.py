"""`verify_draft`: exact speculative verification on both backends (validate, dispatch once, delegate)."""

from __future__ import annotations

from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._api import _params
from agnostic_sampling._api import _prepare
from agnostic_sampling._chain import Chain
from agnostic_sampling._checks import raise_bad_rows
from agnostic_sampling._dispatch import is_tracer
from agnostic_sampling._keys import as_backend_key
from agnostic_sampling._params import SamplingParams
from agnostic_sampling._params import reject_shaping

__all__ = ["DraftVerification", "verify_draft"]


class DraftVerification(NamedTuple):
    """What `verify_draft` returns (a NamedTuple, so a JAX pytree).

    Attributes:
        tokens: ``(B, K + 1)``: each row's accepted drafts, then the correction (at the first
            rejection) or bonus token (after ``K`` accepts), then ``-1``.
        num_accepted: ``(B,)``: how many leading drafts were accepted, in ``[0, K]``.
        num_emitted: ``(B,)``: ``num_accepted + 1``, the tokens this target call produced.
    """

    tokens: Any
    num_accepted: Any
    num_emitted: Any


def _check_draft(draft_ids: Any, draft_probs: Any, shape: tuple[int, ...], module: Any) -> tuple[Any, Any]:  # noqa: C901
    """Check the draft's ids and probabilities against the target logits' shape ``(B, K + 1, V)``."""
    batch, positions, vocab = shape
    ids = module.asarray(draft_ids) if not isinstance(draft_ids, np.ndarray) else draft_ids
    if not np.issubdtype(np.dtype(ids.dtype), np.integer):
        raise TypeError(f"draft_ids must hold integer token ids, got dtype {ids.dtype}")
    if tuple(ids.shape) != (batch, positions - 1):
        raise ValueError(f"draft_ids must have shape (B, K) = {(batch, positions - 1)} for target_logits "
                         f"of shape (B, K + 1, V) = {shape}, got {tuple(ids.shape)}")
    if not is_tracer(ids):
        concrete = np.asarray(ids)
        bad = (concrete < 0) | (concrete >= vocab)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"draft_ids must be token ids in [0, {vocab}), got {int(concrete[where])} "
                             f"at {where}")
    if draft_probs is None:
        return ids, None
    probs = module.asarray(draft_probs)
    if not np.issubdtype(np.dtype(probs.dtype), np.floating) and np.dtype(probs.dtype).name != "bfloat16":
        raise TypeError(f"draft_probs must be a floating-point array, got dtype {probs.dtype}")
    if tuple(probs.shape) != (batch, positions - 1, vocab):
        raise ValueError(f"draft_probs must have shape (B, K, V) = {(batch, positions - 1, vocab)}, "
                         f"got {tuple(probs.shape)}")
    if not is_tracer(probs):
        concrete = np.asarray(probs)
        # Two passes: the minimum (NaN fails it) and the row sums (inf shows there).
        if not concrete.min() >= 0:
            bad = ~(concrete >= 0)
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"draft_probs must be finite and >= 0, got {concrete[where]} at {where}")
        total = concrete.sum(axis=-1, dtype=np.float64)
        off = ~(np.abs(total - 1) <= 1e-3)
        if off.any():
            where = tuple(int(i) for i in np.argwhere(off)[0])
            raise ValueError(f"draft_probs must sum to 1 over the vocabulary (within 1e-3), got "
                             f"{total[where]:.6g} at (row, position) {where}")
    return ids, probs


def verify_draft(
    key: Any,
    target_logits: Any,
    draft_ids: Any,
    draft_probs: Any = None,
    *,
    temperature: Any = 1.0,
    top_k: Any = None,
    top_p: Any = None,
    min_p: Any = None,
    min_keep: Any = 1,
    params: SamplingParams | Chain | None = None,
    backend: str | None = None,
) -> DraftVerification:
    """Verify ``K`` drafted tokens against the target model in one call, exactly.

    With ``p`` the target's processed distribution at each position (the same pipeline and
    parameters as `probs`, per row) and ``q`` the draft's, draft ``x`` is accepted with
    probability ``min(1, p(x) / q(x))``; at the first rejection one token is drawn from
    ``normalise(max(p - q, 0))``, and after ``K`` accepts a bonus token from ``p`` at position
    ``K + 1``. The emitted tokens then follow ``p`` exactly, whatever the draft. A token outside
    ``p``'s kept set is never accepted (acceptance needs ``u * q(x) < p(x)``), and when rounding
    leaves the residual empty the token is drawn from ``p``.

    Args:
        key: as for `sample`: NumPy a ``Generator``, an ``int`` or a ``SeedSequence``; JAX a key
            (or one key per row). ``K + 1`` uniforms are drawn per row.
        target_logits: ``(B, K + 1, V)``: the target model's logits at the ``K`` drafted
            positions and the one after them.
        draft_ids: ``(B, K)`` integer ids of the drafted tokens.
        draft_probs: ``(B, K, V)``: the draft model's processed probabilities (what it sampled
            the drafts from), or ``None`` for a deterministic draft (greedy or n-gram: ``q`` is
            one-hot at the drafted token).
        temperature: as for `sample`; every parameter is a scalar or one value per row ``(B,)``,
            applied at each of the row's positions.
        top_k: as for `sample`.
        top_p: as for `sample`.
        min_p: as for `sample`.
        min_keep: as for `sample`.
        params: a `SamplingParams` or a `Chain` (any step, in any order) instead of the keywords
            above (not both).
        backend: ``"numpy"`` or ``"jax"`` to override detection from the type of ``target_logits``.

    Returns:
        A `DraftVerification`: ``tokens`` ``(B, K + 1)`` (int64 on NumPy, int32 on JAX; ``-1``
        after the last emitted token), ``num_accepted`` and ``num_emitted`` ``(B,)``.

    Example:
        >>> import numpy as np, agnostic_sampling as smp
        >>> target = np.log(np.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]]))  # B = 1, K = 1, V = 3
        >>> out = smp.verify_draft(0, target, np.array([[0]]))  # a greedy draft proposed token 0
        >>> out.tokens.shape, int(out.num_emitted[0]) in (1, 2)
        ((1, 2), True)
    """
    module, array = _prepare(target_logits, backend)
    if array.ndim != 3:
        raise ValueError(f"target_logits must have shape (B, K + 1, V), got shape {tuple(array.shape)}")
    ids, probs = _check_draft(draft_ids, draft_probs, tuple(array.shape), module)
    resolved = _params(params, array.shape[:1], None, {"temperature": temperature, "top_k": top_k,
                                                       "top_p": top_p, "min_p": min_p, "min_keep": min_keep})
    if not isinstance(resolved, Chain):
        reject_shaping(resolved, "verify_draft")
    rng = as_backend_key(key, module, array, "target_logits")
    result, status = module.verify_draft(rng, array, ids, probs, resolved)
    raise_bad_rows(status, array.shape)
    tokens, num_accepted = result
    return DraftVerification(tokens, num_accepted, num_accepted + 1)
