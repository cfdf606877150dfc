"""Helpers for test suites, imported on purpose: seeds, predicted power, collectives of a program.

`seed_for` gives every test a reproducible seed; `power_against` predicts the power of
`agnostic_sampling.stats.chisquare_gof` against a given alternative (how a test shows it would
catch a planted bug); `collectives` lists the collectives of a compiled XLA program, so a test can
prove that sharded sampling moves only per-row scalars. Importing this module imports neither JAX
nor SciPy.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._chisquare import _as_probabilities
from agnostic_sampling._chisquare import _pool_cells
from agnostic_sampling.stats import DEFAULT_ALPHA
from agnostic_sampling.stats import MIN_EXPECTED
from agnostic_sampling.stats import SEED_OFFSET_ENV

__all__ = ["Collective", "collectives", "power_against", "seed_for"]


def seed_for(name: str) -> int:
    """A reproducible seed from a name (a test id), shifted by ``$AGNOSTIC_SAMPLING_SEED_OFFSET``.

    The seed is ``zlib.crc32`` of the name, never Python's salted ``hash``, so a failing test
    replays with the same draws on every machine. Setting the environment variable to another
    integer gives every test fresh seeds, which is how a calibration run repeats the suite.

    Args:
        name: any string; tests pass their pytest node id.

    Returns:
        A seed in ``[0, 2**32)``.

    Example:
        >>> from agnostic_sampling.testing import seed_for
        >>> seed_for("tests/test_x.py::test_y") == seed_for("tests/test_x.py::test_y")
        True
    """
    offset = int(os.environ.get(SEED_OFFSET_ENV, "0") or 0)
    # kept below 2**32 so that every backend's key constructor accepts it
    return (zlib.crc32(name.encode()) + offset) % 2**32


# --------------------------------------------------------------------------------------------
# Predicted power


def _pearson_power(p: np.ndarray, a: np.ndarray, n: int, alpha: float) -> float:
    """Power of Pearson's test of cell probabilities ``p`` when the truth is ``a``.

    ``Y_c = (O_c - n p_c) / sqrt(n p_c)`` has mean ``mu = sqrt(n) (a - p) / sqrt(p)`` and
    covariance ``S = diag(a / p) - u u^T`` with ``u = a / sqrt(p)``; the statistic ``|Y|^2`` has
    mean ``tr S + |mu|^2`` and, for Gaussian ``Y``, variance ``2 tr S^2 + 4 mu^T S mu``. Match
    those two moments with ``c * ncx2(dof, delta)``; when ``a == p`` locally this is ``c = 1``,
    ``delta = |mu|^2``.
    """
    from scipy import stats as st

    dof = p.size - 1
    critical = st.chi2.isf(alpha, dof)
    ratio = a / p
    sum_u2 = float(np.sum(a * ratio))
    trace = float(ratio.sum()) - sum_u2
    trace_sq = float(np.sum(ratio**2) - 2 * np.sum(a * ratio**2) + sum_u2**2)
    mu = np.sqrt(n) * (a - p) / np.sqrt(p)
    lam = float(mu @ mu)
    mu_s_mu = float(np.sum(ratio * mu**2) - (np.sqrt(a * ratio) @ mu) ** 2)
    mean, variance = trace + lam, 2 * trace_sq + 4 * mu_s_mu
    if lam == 0 and np.allclose(ratio, 1):
        return alpha
    discriminant = mean**2 - dof * variance / 2
    if discriminant < 0:  # no noncentral fit: a scaled central chi-square (Satterthwaite)
        scale, nu = variance / (2 * mean), 2 * mean**2 / variance
        return float(st.chi2.sf(critical / scale, nu))
    scale = (mean - math.sqrt(discriminant)) / dof
    return float(st.ncx2.sf(critical / scale, dof, max(mean / scale - dof, 0.0)))


def power_against(expected: Any, alternative: Any, n: int, *, alpha: float = DEFAULT_ALPHA,
                  min_expected: float = MIN_EXPECTED) -> float:
    """The predicted power of `chisquare_gof` at level ``alpha`` against ``alternative``.

    That is, when the draws come from ``alternative`` instead of ``expected``. Uses the cells the test would
    form for ``n`` draws. Under the alternative, Pearson's statistic is approximated by ``c`` times a
    noncentral chi-square on the test's degrees of freedom, with ``c`` and the noncentrality chosen to match
    the statistic's exact mean and its variance under the normal approximation of the cell counts. For nearby
    alternatives this is the textbook noncentral chi-square with noncentrality ``n * sum((a_c - p_c)^2 /
    p_c)`` (``c = 1``, as `required_samples` uses); for a deviation spread over many cells it corrects that
    textbook power, which can be too optimistic (tests/test_stats.py, the tail-bias bug: textbook 0.50, this
    0.37, simulated 0.37). Mass of ``alternative`` outside the support of ``expected`` fails the test as soon
    as one draw lands there; when none does, the draws follow ``alternative`` renormalised on the support,
    which is what the chi-square part uses.

    Args:
        expected: the distribution under test (length ``V``).
        alternative: the distribution the draws really come from (length ``V``).
        n: number of draws.
        alpha: level of the test.
        min_expected: as in `chisquare_gof`.

    Returns:
        The probability that the test rejects.

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.testing import power_against
        >>> p, a = np.full(4, 0.25), np.array([0.3, 0.25, 0.25, 0.2])
        >>> round(power_against(p, a, 10_000, alpha=1e-6), 3)
        1.0
    """
    p, a = _as_probabilities(expected), _as_probabilities(alternative)
    if a.shape != p.shape:
        raise ValueError(f"alternative must have shape {p.shape}, got {a.shape}")
    cells = _pool_cells(p, n, min_expected)
    if len(cells) < 2:
        chi_power = 0.0
    else:
        p_cell = np.array([p[c].sum() for c in cells])
        a_cell = np.array([a[c].sum() for c in cells])
        # Conditional on staying in the support, the draws follow a renormalised on the cells.
        a_cell = a_cell / a_cell.sum() if a_cell.sum() > 0 else p_cell
        chi_power = _pearson_power(p_cell, a_cell, n, alpha)
    leak = float(a[p == 0].sum())
    no_leak_seen = (1 - leak) ** n
    return 1 - no_leak_seen * (1 - chi_power)


# --------------------------------------------------------------------------------------------
# Collectives of a compiled program


class Collective(NamedTuple):
    """One collective operation of a compiled XLA program.

    Attributes:
        op: ``all-reduce``, ``all-gather``, ``all-to-all``, ``collective-permute`` or
            ``reduce-scatter`` (an async ``-start``/``-done`` pair counts once, as its op).
        shapes: the per-device operand shapes, e.g. ``("f32[64]",)``.
        operand_bytes: bytes of the operands on one device (elements times dtype size).
        in_loop: True when the op sits inside a ``while`` body or condition, so it runs once per
            iteration, not once per call.
    """

    op: str
    shapes: tuple[str, ...]
    operand_bytes: int
    in_loop: bool


_COLLECTIVE_OPS = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(r"\b(body|condition|to_apply|calls|branch_computations|true_computation|"
                     r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_NAME = re.compile(r"%?([\w.\-]+)")


def _shape_bytes(shape: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(shape):
        count = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        total += count * _DTYPE_BYTES.get(dtype, 4)
    return total


def collectives(hlo_text: str) -> list[Collective]:  # noqa: C901
    """The collectives of a compiled program, from its text: ``jit(f).lower(...).compile().as_text()``.

    Sizes are those of the per-device operands, read from the instructions that define them.
    Use it to prove that a program moves only per-row scalars between devices (every entry an
    ``all-reduce`` of a few elements per row), or to count the bytes it moves.

    Args:
        hlo_text: the text of a compiled (SPMD-partitioned) HLO module.

    Returns:
        One `Collective` per collective instruction, in program order.

    Example:
        >>> from agnostic_sampling.testing import collectives
        >>> text = '''ENTRY %main (p: f32[64,512]) -> f32[64] {
        ...   %p = f32[64,512]{1,0} parameter(0)
        ...   %m = f32[64]{0} reduce(%p, %c), dimensions={1}, to_apply=%max
        ...   ROOT %all-reduce = f32[64]{0} all-reduce(%m), replica_groups={{0,1}}, to_apply=%max
        ... }'''
        >>> collectives(text)
        [Collective(op='all-reduce', shapes=('f32[64]',), operand_bytes=256, in_loop=False)]
    """
    shapes: dict[str, str] = {}
    found: list[tuple[str, str, list[str]]] = []  # (computation, op, operand names or shapes)
    calls: dict[str, set[str]] = {}
    loop_roots: set[str] = set()
    computation = ""
    for line in hlo_text.splitlines():
        instruction = _INSTRUCTION.match(line)
        if instruction is None:
            header = _COMPUTATION.match(line)
            if header is not None:
                computation = header.group(1)
            continue
        name, shape, op, rest = instruction.groups()
        shapes[name] = shape
        for kind, targets in _CALLED.findall(rest):
            called = set(_NAME.findall(targets))
            calls.setdefault(computation, set()).update(called)
            if op == "while" and kind in ("body", "condition"):
                loop_roots.update(called)
        base = op.removesuffix("-start")
        if base in _COLLECTIVE_OPS and not op.endswith("-done"):
            operands = rest.split(")", 1)[0]
            found.append((computation, base, [o.strip() for o in operands.split(",") if o.strip()]))

    in_loop, pending = set(), list(loop_roots)
    while pending:
        name = pending.pop()
        if name not in in_loop:
            in_loop.add(name)
            pending.extend(calls.get(name, ()))

    result = []
    for computation, op, operands in found:
        operand_shapes = []
        for operand in operands:
            # Older XLA prints "f32[8]{0} %name", newer prints "%name" alone.
            shape = _SHAPE.search(operand) or _SHAPE.search(shapes.get(operand.split()[-1].lstrip("%"), ""))
            operand_shapes.append(shape.group(0) if shape else "?[]")
        result.append(Collective(op, tuple(operand_shapes), sum(_shape_bytes(s) for s in operand_shapes),
                                 computation in in_loop))
    return result
