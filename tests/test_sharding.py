"""Sampling on logits sharded over the batch and the vocabulary, on 8 simulated CPU devices.

Why a child process: XLA reads ``--xla_force_host_platform_device_count`` once, when JAX starts
its CPU backend, and by the time this module is collected other tests have started it with one
device. Setting the flag for the whole suite in ``conftest.py`` would work too, but then every
other test (the README blocks included) would run with 8 devices instead of the setup users
have, and a user's own ``XLA_FLAGS`` would fight with it. So in an ordinary run the sharded tests
below skip and `test_on_eight_simulated_devices` runs this file again in a child process with
the flag (about 20-40 s); on a machine with 8 devices, or under
``XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest tests/test_sharding.py``, they run
directly.

What is checked, for a batch axis, a vocabulary axis, and both: kept sets equal to the unsharded
ones, the same draws for the same key and the same greedy ids, probabilities equal to float
rounding, the sharding of each result, a compiled program whose only collectives are all-reduces
of per-row scalars and of the one block per row the draw ends in (and no array larger than one
device's shard); from 8192 tokens, the candidate route's few floats per row; the statistical suite on
vocabulary-sharded draws, a vocabulary padded with ``-inf`` to a multiple of 128, draws
identical on 1, 2, 4 and 8 devices, and `generate` with a vocabulary-sharded model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import agnostic_sampling as smp  # noqa: E402
from agnostic_sampling import stats  # noqa: E402
from agnostic_sampling.sharding import pad_vocab  # noqa: E402
from agnostic_sampling.testing import collectives  # noqa: E402

N_DEVICES = 8
ENOUGH = len(jax.devices()) >= N_DEVICES
needs_devices = pytest.mark.skipif(
    not ENOUGH, reason=f"needs {N_DEVICES} devices: runs in the child of test_on_eight_simulated_devices")

ROOT = Path(__file__).resolve().parent.parent
DEVICE_FLAG = f"--xla_force_host_platform_device_count={N_DEVICES}"


@pytest.mark.skipif(ENOUGH, reason=f"this process has {N_DEVICES} devices: the tests run directly")
def test_on_eight_simulated_devices() -> None:
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_force_host_platform_device_count"))
    env = dict(os.environ, XLA_FLAGS=f"{flags} {DEVICE_FLAG}".strip(), JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "pytest", str(Path(__file__).relative_to(ROOT)), "-q", "-x",
               "-p", "no:cacheprovider", "-k", "not test_on_eight_simulated_devices"]
    child = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    report = child.stdout[-6000:] + child.stderr[-3000:]
    assert child.returncode == 0, f"sharded tests failed in the child process:\n{report}"
    summary = child.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary, report


# --------------------------------------------------------------------------------------------
# The helpers (any device count)


def test_pad_vocab(backend: Any) -> None:
    x = np.array([[1.0, 5.0, 3.0], [0.0, -np.inf, 2.0]], np.float32)
    padded = pad_vocab(backend.array(x), 4)
    assert type(padded) is type(backend.array(x)) and padded.shape == (2, 4)
    minus_inf = np.full((2, 1), -np.inf, np.float32)
    np.testing.assert_array_equal(np.asarray(padded), np.concatenate([x, minus_inf], 1))
    probs = backend.probs(np.asarray(padded), top_p=0.9)
    np.testing.assert_array_equal(probs[:, :3], backend.probs(x, top_p=0.9))
    assert backend.sample(backend.key(0), np.asarray(padded)).max() < 3
    assert pad_vocab(x, 3) is x
    with pytest.raises(ValueError, match="multiple"):
        pad_vocab(x, 0)


def test_collectives_reads_sizes_and_loops() -> None:
    text = """
%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p = (s32[], f32[4,8]{1,0}) parameter(0)
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %r = f32[4]{0} reduce(%x, %c), dimensions={1}, to_apply=%add
  %all-reduce.1 = f32[4]{0} all-reduce(%r), replica_groups={{0,1}}, to_apply=%add
}
%cond (p: (s32[], f32[4,8])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}
ENTRY %main (a: f32[4,8]) -> f32[4,16] {
  %a = f32[4,8]{1,0} parameter(0)
  %w = (s32[], f32[4,8]{1,0}) while(%t), condition=%cond, body=%body
  %ag = ((f32[4,8]{1,0}), f32[4,16]{1,0}) all-gather-start(%a), dimensions={1}
  ROOT %agd = f32[4,16]{1,0} all-gather-done(%ag)
}
"""
    found = collectives(text)
    assert [(c.op, c.shapes, c.operand_bytes, c.in_loop) for c in found] == [
        ("all-reduce", ("f32[4]",), 16, True), ("all-gather", ("f32[4,8]",), 128, False)]


# --------------------------------------------------------------------------------------------
# Data: rows that mix every strategy, ties included

BATCH, VOCAB = 16, 2048
LAYOUTS = {  # mesh shape, axis names, how the (B, V) logits are split
    "batch": ((8,), ("batch",), P("batch", None)),
    "vocab": ((8,), ("vocab",), P(None, "vocab")),
    "batch+vocab": ((2, 4), ("batch", "vocab"), P("batch", "vocab")),
}


def _mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> Mesh:
    devices = np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape)
    return Mesh(devices, names)


def _logits(batch: int, vocab: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, vocab)).astype(np.float32) * 3
    x[1::2] = np.round(x[1::2] * 2) / 2  # coarse values: ties at every threshold, across shards
    x[3, rng.choice(vocab, vocab // 2, replace=False)] = -np.inf
    return x


def _mixed_params(batch: int) -> smp.SamplingParams:
    row = np.arange(batch)
    return smp.SamplingParams(
        temperature=np.where(row % 8 == 0, 0.0, 0.5 + (row % 5) * 0.25).astype(np.float32),
        top_k=np.where(row % 4 == 1, 20 + row, 0).astype(np.int32),
        top_p=np.select([row % 4 == 2, row % 4 == 3], [0.9, 0.5], 1.0).astype(np.float32),
        min_p=np.where(row % 3 == 0, 0.05, 0.0).astype(np.float32),
        min_keep=np.where(row % 6 == 5, 3, 1).astype(np.int32),
    )


def _pipeline(key: Any, logits: Any, params: smp.SamplingParams) -> tuple[Any, Any, Any, Any]:
    return (smp.process_logits(logits, params=params), smp.probs(logits, params=params),
            smp.sample(key, logits, params=params), smp.greedy(logits))


_PIPELINE = jax.jit(_pipeline)


def _compiled(fn: Any, *args: Any) -> Any:
    """Compile once for these arguments: the executable both runs and shows its HLO text."""
    return fn.lower(*args).compile()


def _largest_array(hlo_text: str) -> int:
    """Elements of the largest array anywhere in a compiled (per-device) program."""
    shapes = re.findall(r"\b[a-z]+\d*\[([\d,]+)\]", hlo_text)
    return max((int(np.prod([int(d) for d in dims.split(",")])) for dims in shapes), default=1)


def _assert_only_row_scalars_move(hlo_text: str, rows: int) -> None:
    """Every collective is an all-reduce of per-row scalars, except that the draw may move the one
    block of at most 128 tokens per row that it finishes in: no vocabulary moves."""
    found = collectives(hlo_text)
    budget = lambda c: 8 * rows * len(c.shapes) + (0 if c.in_loop else 4 * rows * 128)  # noqa: E731
    moving = [c for c in found if c.op != "all-reduce" or c.operand_bytes > budget(c)]
    assert not moving, f"collectives that move more than per-row scalars and one block: {moving}"


# --------------------------------------------------------------------------------------------
# Tests on 8 devices


@needs_devices
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sharded_matches_unsharded(layout: str, seed: int) -> None:
    shape, names, spec = LAYOUTS[layout]
    mesh = _mesh(shape, names)
    x, params, key = _logits(BATCH, VOCAB, seed), _mixed_params(BATCH), jax.random.key(seed)
    z_ref, p_ref, ids_ref, top_ref = (np.asarray(a) for a in _PIPELINE(key, jnp.asarray(x), params))
    sharded = jax.device_put(x, NamedSharding(mesh, spec))
    program = _compiled(_PIPELINE, key, sharded, params)
    z, p, ids, top = program(key, sharded, params)

    np.testing.assert_array_equal(np.isfinite(np.asarray(z)), np.isfinite(z_ref), err_msg="kept sets differ")
    np.testing.assert_allclose(np.asarray(p), p_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(ids), ids_ref, err_msg="draws with the same key differ")
    np.testing.assert_array_equal(np.asarray(top), top_ref)
    # Results keep the input's layout: (B, V) outputs as given, ids split like the batch axis.
    assert z.sharding.is_equivalent_to(sharded.sharding, 2)
    assert p.sharding.is_equivalent_to(sharded.sharding, 2)
    for row_result in (ids, top):
        assert row_result.sharding.is_equivalent_to(NamedSharding(mesh, P(spec[0])), 1), row_result.sharding

    batch_shards = mesh.shape["batch"] if "batch" in names else 1
    vocab_shards = mesh.shape["vocab"] if "vocab" in names else 1
    hlo = program.as_text()
    _assert_only_row_scalars_move(hlo, BATCH // batch_shards)
    shard_size = BATCH * VOCAB // (batch_shards * vocab_shards)
    assert _largest_array(hlo) <= shard_size, "some device holds more than its shard of the logits"


@needs_devices
def test_vocabulary_sharded_candidates_move_a_few_floats_per_row(seed: int) -> None:
    """From 8192 tokens the JAX backend draws from candidate blocks (see `backends/_jax_search.py`): one
    ``lax.top_k`` over the block maxima (all-gathered: V / 32 floats per row) and one gather of 64
    blocks of 32 tokens (an all-reduce of 2048 floats per row), plus, for rows that fall back to
    the whole row, the per-row scalars of the searches and one block of the draw. Same kept sets,
    draws and greedy ids as unsharded; nothing in a loop moves more than per-row scalars, and the
    total stays below (V / 32 + 2048 + 128 + 64 + 34) floats per row (5% of a row of 128256
    tokens). The last 34 are the all-greedy branch (`greedy`'s pass: two per-row scalars and one
    block of 32), counted although a call runs either it or the sampling branch (a ``lax.cond``).
    """
    vocab = 16384
    x, params, key = _logits(BATCH, vocab, seed), _mixed_params(BATCH), jax.random.key(seed)
    z_ref, p_ref, ids_ref, top_ref = (np.asarray(a) for a in _PIPELINE(key, jnp.asarray(x), params))
    sharded = jax.device_put(x, NamedSharding(_mesh((8,), ("vocab",)), P(None, "vocab")))
    program = _compiled(_PIPELINE, key, sharded, params)
    z, p, ids, top = (np.asarray(a) for a in program(key, sharded, params))
    np.testing.assert_array_equal(np.isfinite(z), np.isfinite(z_ref), err_msg="kept sets differ")
    np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(top, top_ref)

    # The budget, for one sample call (the pipeline above makes three candidate sets).
    draw = jax.jit(lambda key, x, params: smp.sample(key, x, params=params))
    found = collectives(_compiled(draw, key, sharded, params).as_text())
    # Floats per row: an all-gather counted at its result (every device's part), the rest at the operand.
    floats = [c.operand_bytes / 4 / BATCH * (N_DEVICES if c.op == "all-gather" else 1) for c in found]
    assert all(f <= len(c.shapes) for c, f in zip(found, floats, strict=True) if c.in_loop), found
    assert max(floats) <= 2048 + 2, found
    budget = vocab / 32 + 2048 + 128 + 64 + 34
    assert sum(f for c, f in zip(found, floats, strict=True) if not c.in_loop) <= budget, found
    assert any(c.op == "all-gather" for c in found)  # the route is taken: the block maxima move


@needs_devices
def test_hlo_audit_catches_a_vocabulary_gather() -> None:
    """The audit above is not vacuous: gathering the vocabulary before sampling is caught."""
    mesh = _mesh((8,), ("vocab",))
    replicated = NamedSharding(mesh, P())
    gather_then_sample = jax.jit(
        lambda key, x: smp.sample(key, jax.lax.with_sharding_constraint(x, replicated)))
    x = jax.device_put(jnp.zeros((BATCH, VOCAB)), NamedSharding(mesh, P(None, "vocab")))
    hlo = _compiled(gather_then_sample, jax.random.key(0), x).as_text()
    assert any(c.op == "all-gather" for c in collectives(hlo))
    with pytest.raises(AssertionError, match="all-gather"):
        _assert_only_row_scalars_move(hlo, BATCH)
    assert _largest_array(hlo) >= BATCH * VOCAB


@needs_devices
def test_vocab_sharded_draws_pass_the_statistical_suite(seed: int) -> None:
    """Many draws at once: each of 4 parameter groups repeated over 32768 rows, vocabulary on 8 devices.

    Also the issue's agreement criterion: the same key gives the same token as the unsharded
    program in at least 99.9% of these 131072 draws.
    """
    groups, vocab, draws = 4, 64, 32768
    base = np.random.default_rng(seed).standard_normal((groups, vocab)).astype(np.float32) * 2
    per_group = dict(temperature=[0.7, 1.0, 1.0, 1.3], top_k=[0, 10, 0, 0], top_p=[1.0, 1.0, 0.8, 1.0],
                     min_p=[0.0, 0.0, 0.0, 0.1])
    expected = stats.reference_probs(base, **{k: np.array(v) for k, v in per_group.items()})
    params = smp.SamplingParams(**{k: np.tile(np.asarray(v, np.int32 if k == "top_k" else np.float32), draws)
                                   for k, v in per_group.items()})
    logits = np.tile(base, (draws, 1))  # row r belongs to group r % groups
    mesh = _mesh((8,), ("vocab",))
    draw = jax.jit(lambda key, x, params: smp.sample(key, x, params=params))
    key = jax.random.key(seed)
    ids = np.asarray(draw(key, jax.device_put(logits, NamedSharding(mesh, P(None, "vocab"))), params))
    ids_unsharded = np.asarray(draw(key, jnp.asarray(logits), params))

    assert np.mean(ids == ids_unsharded) >= 0.999
    stats.assert_samples_match(ids.reshape(draws, groups), expected, tv=0.035, seed=seed)


@needs_devices
def test_vocabulary_not_divisible_padded_with_minus_inf(seed: int) -> None:
    """V = 2045 cannot be split over 8 devices; padded with -inf it can, and nothing changes.

    With one key per row the noise of a row does not depend on the padded width, so the draws
    equal the unpadded, unsharded ones exactly; with one key for the batch they would not (the
    noise counter of row b starts at b * padded width).
    """
    vocab = VOCAB - 3
    x, params = _logits(BATCH, vocab, seed), _mixed_params(BATCH)
    keys = jax.random.split(jax.random.key(seed), BATCH)
    z_ref, p_ref, ids_ref, _ = (np.asarray(a) for a in _PIPELINE(keys, jnp.asarray(x), params))
    mesh = _mesh((8,), ("vocab",))
    padded = jax.device_put(pad_vocab(x, 128), NamedSharding(mesh, P(None, "vocab")))
    assert padded.shape == (BATCH, VOCAB)
    z, p, ids, _ = (np.asarray(a) for a in _PIPELINE(keys, padded, params))

    np.testing.assert_array_equal(np.isfinite(z[:, :vocab]), np.isfinite(z_ref))
    assert not np.isfinite(z[:, vocab:]).any() and not p[:, vocab:].any()
    np.testing.assert_allclose(p[:, :vocab], p_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ids, ids_ref)


@needs_devices
def test_uneven_vocabulary_inside_jit_needs_no_padding(seed: int) -> None:
    """Inside jit a sharding constraint may split V = 2045 unevenly: XLA pads internally."""
    vocab = VOCAB - 3
    x, key = _logits(BATCH, vocab, seed), jax.random.key(seed)
    mesh = _mesh((8,), ("vocab",))
    split = NamedSharding(mesh, P(None, "vocab"))
    draw = jax.jit(lambda key, x: smp.sample(key, jax.lax.with_sharding_constraint(x, split), top_p=0.9))
    program = _compiled(draw, key, jnp.asarray(x))
    ids = program(key, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(smp.sample(key, jnp.asarray(x), top_p=0.9)))
    _assert_only_row_scalars_move(program.as_text(), BATCH)


@needs_devices
def test_draws_do_not_depend_on_the_device_count(seed: int) -> None:
    """The same key gives the same tokens whether the vocabulary is on 1 device or split over 2, 4, 8.

    The draw takes one uniform per row (from the batch key, or from each row's own key), never
    per-token noise, and jit's results do not depend on sharding; only the order of float sums
    changes with the split, which these logits (no uniform within rounding of a token boundary)
    do not feel.
    """
    x = jnp.asarray(_logits(BATCH, VOCAB, seed))
    batch_key = jax.random.key(seed)
    row_keys = jax.random.split(jax.random.key(seed + 1), BATCH)
    draw = jax.jit(lambda key, x: smp.sample(key, x, temperature=0.9, top_p=0.95))
    references = [np.asarray(draw(key, x)) for key in (batch_key, row_keys)]
    for count in (2, 4, 8):
        split = NamedSharding(_mesh((count,), ("vocab",)), P(None, "vocab"))
        sharded = jax.device_put(x, split)
        for key, reference in zip((batch_key, row_keys), references, strict=True):
            ids = np.asarray(draw(key, sharded))
            np.testing.assert_array_equal(ids, reference, err_msg=f"{count} devices")


@needs_devices
def test_generate_with_a_vocabulary_sharded_model(seed: int) -> None:
    """A bigram "model" whose output columns are split over 8 devices: same ids and log-probs, and
    no gather (the chosen token's log-probability is a masked per-row sum, an all-reduce too)."""
    vocab = 256
    table = np.random.default_rng(seed).standard_normal((vocab, vocab)).astype(np.float32) * 2
    mesh = _mesh((8,), ("vocab",))
    sharded_table = jax.device_put(table, NamedSharding(mesh, P(None, "vocab")))
    prompt = jnp.asarray(np.arange(8).reshape(4, 2) % vocab, jnp.int32)

    def decode(key: Any, prompt: Any, table: Any) -> Any:
        return smp.generate(key, lambda ids: table[ids], prompt, max_new_tokens=6, top_p=0.9, min_p=0.02,
                            return_logprobs=True)

    run = jax.jit(decode)
    key = jax.random.key(seed)
    program = _compiled(run, key, prompt, sharded_table)
    out, unsharded = program(key, prompt, sharded_table), run(key, prompt, jnp.asarray(table))
    np.testing.assert_array_equal(np.asarray(out.ids), np.asarray(unsharded.ids))
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(unsharded.logprobs), rtol=1e-5, atol=1e-6)
    _assert_only_row_scalars_move(program.as_text(), prompt.shape[0])


@needs_devices
def test_the_design_notes_sharding_section_on_eight_devices() -> None:
    """docs/design.md's sharding examples on 8 devices (tests/test_readme.py runs them on one,
    where there is no collective to check): same draws as one device, the layouts of the results,
    and no collective above a sixteenth of the logits."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text[text.index("## Sharded logits"):]
    section = section[:section.index("\n## ", 1)]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    namespace: dict[str, Any] = {"__name__": "design"}
    exec(compile(code, "docs/design.md, Sharded logits", "exec"), namespace)
    logits = namespace["sharded_logits"]
    compiled = namespace["sample_top_p"].lower(jax.random.key(1), logits).compile()
    for c in collectives(compiled.as_text()):
        moved = c.operand_bytes * (N_DEVICES if c.op == "all-gather" else 1)
        assert moved <= logits.nbytes / 16, c
