"""Helpers for logits sharded over devices: padding the vocabulary, auditing a compiled program.

The JAX backend needs nothing special for sharded logits: every step of the pipeline is an
elementwise map or a reduction over the vocabulary whose result is one scalar per row, so under
``jax.jit`` XLA's SPMD partitioner runs each step on the local shard and all-reduces the per-row
scalars. Two things are left to the caller, and this module helps with both:

- A committed array (``jax.device_put``) must divide evenly over its mesh axis. `pad_vocab`
  appends ``-inf`` logits, which the pipeline never keeps, so ids, kept sets and probabilities of
  the real tokens are unchanged (slice ``[..., :V]`` off `probs` / `process_logits` if needed).
- `collectives` lists the collectives of a compiled program with their sizes, so that a test or
  a benchmark can check that no device receives the vocabulary (an all-gather, all-to-all or
  collective-permute of the vocabulary axis) and count the bytes moved.

Importing this module imports neither JAX nor SciPy.
"""

from __future__ import annotations

import re
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._dispatch import is_jax_array

__all__ = ["Collective", "collectives", "pad_vocab"]


def pad_vocab(logits: Any, multiple: int) -> Any:
    """Pad the last axis with ``-inf`` up to a multiple of ``multiple`` (NumPy or JAX in, same out).

    A ``-inf`` logit is outside every kept set, so sampling the padded logits gives the same
    distribution, and never an id ``>= V``. The draw takes one uniform per row, so the padded
    width does not change which token a key draws (only float summation order can differ).
    Use a multiple of 128 per device (``128 * devices``): the JAX backend works on blocks of up
    to 128 tokens, and a block split between two devices makes XLA all-gather shards. A
    ``multiple`` that does not depend on the device count (1024 covers up to 8 devices) keeps
    even the summation order the same across meshes.

    Args:
        logits: array of shape ``(..., V)``, NumPy or JAX (a tracer too).
        multiple: the padded width is the smallest multiple of this that is ``>= V``.

    Returns:
        The logits, with ``(-V) % multiple`` columns of ``-inf`` appended (the input itself when
        none are needed).

    Example:
        >>> import numpy as np
        >>> from agnostic_sampling.sharding import pad_vocab
        >>> pad_vocab(np.array([[1.0, 2.0, 3.0]]), 4).tolist()
        [[1.0, 2.0, 3.0, -inf]]
    """
    if isinstance(multiple, (bool, np.bool_)) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be an int >= 1, got {multiple!r}")
    extra = -logits.shape[-1] % int(multiple)
    if extra == 0:
        return logits
    widths = [(0, 0)] * (len(logits.shape) - 1) + [(0, extra)]
    if is_jax_array(logits):
        import jax.numpy as jnp

        return jnp.pad(logits, widths, constant_values=-jnp.inf)
    logits = np.asarray(logits)
    return np.pad(logits, widths, constant_values=-np.inf)


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


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of a compiled program, from its text: ``jit(f).lower(...).compile().as_text()``.

    Sizes are those of the per-device operands, read from the instructions that define them.
    Use it to prove that a program moves only per-row scalars between devices (every entry an
    ``all-reduce`` of a few elements per row), or to count the bytes it moves.

    Args:
        hlo_text: the text of a compiled (SPMD-partitioned) HLO module.

    Returns:
        One `Collective` per collective instruction, in program order.

    Example:
        >>> from agnostic_sampling.sharding import collectives
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
