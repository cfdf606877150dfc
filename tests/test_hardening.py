"""Defects found by fuzzing and by real clients (issue "Hardening"), one regression test each.

Layouts: every view of the logits that NumPy can hand over (a broadcast row, a ``[:, -1]`` slice
of a model's output, Fortran order, a transpose) gives the draws of a contiguous copy, at the cost
of a contiguous copy: no pass copies the whole batch per chunk of rows.
"""

from __future__ import annotations

import tracemalloc
import warnings
from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling.backends import _numpy_mass
from agnostic_sampling.backends import _numpy_pipeline as pipeline
from agnostic_sampling.backends import _numpy_rows


def _broadcast(c: np.ndarray) -> np.ndarray:
    return np.broadcast_to(c[:1], c.shape)


def _sliced(c: np.ndarray) -> np.ndarray:
    out = np.zeros((c.shape[0], 3, c.shape[1]), c.dtype)
    out[:, -1] = c
    return out[:, -1]


def _fortran(c: np.ndarray) -> np.ndarray:
    return np.asfortranarray(c)


def _transposed(c: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(c.T).T


def _transposed_3d(c: np.ndarray) -> np.ndarray:  # (2, B/2, V) read as (B/2, 2, V)
    return np.ascontiguousarray(c.reshape(2, -1, c.shape[1]).transpose(1, 0, 2)).transpose(1, 0, 2)


def _every_other_token(c: np.ndarray) -> np.ndarray:
    out = np.zeros((c.shape[0], 2 * c.shape[1]), c.dtype)
    out[:, ::2] = c
    return out[:, ::2]


LAYOUTS = {"broadcast": _broadcast, "sliced": _sliced, "fortran": _fortran, "transposed": _transposed,
           "transposed_3d": _transposed_3d, "every_other_token": _every_other_token}
VIEWS = ("broadcast", "sliced")  # layouts whose rows are contiguous: never copied at all


def _logits(rows: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, vocab)) * rng.uniform(0.3, 3, (rows, 1))).astype(np.float32)


PARAMS = [
    {},
    {"top_p": 0.9},
    {"top_p": 0.5, "temperature": 1.5},
    {"top_k": 40, "temperature": 0.7},
    {"min_p": 0.05},
    {"temperature": np.array([0.0, 1.0] * 32, np.float32), "top_p": 0.95},
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(p) or "dense")
def test_every_layout_draws_what_a_contiguous_copy_draws(layout, params):
    x = LAYOUTS[layout](_logits(64, 3000))
    if x.ndim == 3:
        params = {k: np.reshape(v, x.shape[:-1]) if np.ndim(v) else v for k, v in params.items()}
    contiguous = np.ascontiguousarray(x)
    assert not np.shares_memory(x, contiguous)
    for seed in (0, 1):
        np.testing.assert_array_equal(smp.sample(seed, x, **params), smp.sample(seed, contiguous, **params))
    np.testing.assert_array_equal(smp.process_logits(x, **params), smp.process_logits(contiguous, **params))
    np.testing.assert_array_equal(smp.greedy(x), smp.greedy(contiguous))


class _TakeSources:
    """Records the sources of every ``np.take`` call that are not C-contiguous: NumPy copies
    such a source whole on every call, which made chunked passes quadratic in the batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.strided: list[tuple[int, ...]] = []
        original = np.take

        def take(a: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
                self.strided.append(a.shape)
            return original(a, *args, **kwargs)

        monkeypatch.setattr(np, "take", take)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_pass_copies_the_whole_batch_per_chunk(layout, monkeypatch):
    rows, vocab = 64, 16384  # 8 rows per chunk of the row-wise passes
    x = LAYOUTS[layout](_logits(rows, vocab, seed=3))
    chunked = []  # the row-wise chunked passes must run for this test to mean anything
    original = _numpy_rows._subtract_rows

    def subtract_rows(source: np.ndarray, some: np.ndarray, *args: Any, **kwargs: Any) -> None:
        chunked.append(some.size)
        original(source, some, *args, **kwargs)

    for module in (_numpy_mass, _numpy_rows):  # each binds the name
        monkeypatch.setattr(module, "_subtract_rows", subtract_rows)
    take = _TakeSources(monkeypatch)
    ids, peak = _peak_memory(lambda: smp.sample(0, x))  # dense rows whose mass bounds need a pass
    assert max(chunked) > 1 and len(chunked) > 2
    assert take.strided == []
    contiguous = np.ascontiguousarray(x)
    contiguous_ids, contiguous_peak = _peak_memory(lambda: smp.sample(0, contiguous))
    # A view is never copied; other layouts are copied once, to C order.
    allowed = contiguous_peak + (0.05 if layout in VIEWS else 1.05) * x.nbytes
    assert peak < allowed, (peak / x.nbytes, contiguous_peak / x.nbytes)
    np.testing.assert_array_equal(ids, contiguous_ids)


def _peak_memory(call: Any) -> tuple[Any, int]:
    """``call()`` and the peak of the memory that NumPy and Python allocated during it."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", ["contiguous", *LAYOUTS])
def test_probs_rows_sum_to_one_in_every_layout(layout):
    c = _logits(4, 128256, seed=4)
    x = c if layout == "contiguous" else LAYOUTS[layout](c)
    for params in ({}, {"temperature": 0.5}, {"top_p": 0.99}):
        sums = smp.probs(x, **params).astype(np.float64).sum(axis=-1)
        assert np.abs(sums - 1).max() < 1e-6, (params, np.abs(sums - 1).max())


# --------------------------------------------------------------------------------------------
# Parameter values: one rule on both backends

LOGITS = np.array([[1.0, 2.0, 3.0, 0.5], [0.0, -1.0, 4.0, 3.9]], np.float32)


@pytest.mark.parametrize("name", ["top_k", "min_keep"])
@pytest.mark.parametrize("value", [2**31, 2**32 + 1, 2**40, 2**63 - 1, np.int64(2**62), np.uint64(2**63 - 5),
                                   float(2**40), np.array([2**33, 2**35])])
def test_counts_past_the_vocabulary_keep_every_token(backend, name, value):
    kept = backend.probs(LOGITS, temperature=100.0, **{name: value}) > 0
    assert kept.all()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70, 1e20, np.uint64(2**64 - 1),
                                   np.array([3.0, 1e19])])
@pytest.mark.parametrize("name", ["top_k", "min_keep"])
def test_counts_past_int64_name_the_parameter(eager_backend, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an integer in \[-2\*\*63, 2\*\*63\).*got "):
        smp.sample(eager_backend.key(0), eager_backend.array(LOGITS), **{name: value})


@pytest.mark.parametrize("name", ["temperature", "top_k", "top_p", "min_p", "min_keep"])
@pytest.mark.parametrize("value", [1 + 0j, np.complex64(0.5), np.array([0.5 + 1j, 1.0])])
def test_complex_parameters_are_a_type_error(eager_backend, name, value):
    with pytest.raises(TypeError, match=f"{name} must be real"):
        smp.probs(eager_backend.array(LOGITS), **{name: value})


def test_complex_parameters_are_a_type_error_under_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    with pytest.raises(TypeError, match="temperature must be real"):
        jax.jit(lambda t: smp.probs(jnp.asarray(LOGITS), temperature=t))(jnp.complex64(1))


@pytest.mark.parametrize("temperature", [1e-44, 1e-40, 1e-38, 1.1754942e-38])
def test_subnormal_temperatures_are_greedy(backend, temperature):
    kept = backend.probs(LOGITS, temperature=np.float32(temperature))
    np.testing.assert_array_equal(kept, np.eye(4, dtype=np.float32)[[2, 2]])
    ids = backend.sample(backend.key(0), LOGITS, temperature=np.float32(temperature))
    np.testing.assert_array_equal(ids, [2, 2])
    z = backend.process_logits(LOGITS, temperature=np.float32(temperature))
    assert not np.isnan(z).any()
    # The smallest normal float32 is a temperature like any other.
    assert (backend.probs(LOGITS[:, :2] * 0, temperature=np.float32(1.1754944e-38)) > 0).all()


def test_temperatures_past_float32_are_an_error_eagerly_and_greedy_under_jit(eager_backend):
    pattern = r"temperature must be a finite number >= 0 and <= 3\.4028235e\+38.*1e\+39"
    with pytest.raises(ValueError, match=pattern):
        smp.sample(eager_backend.key(0), eager_backend.array(LOGITS), temperature=1e39)
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    with warnings.catch_warnings():  # JAX's own cast of the float64 argument to float32 overflows
        warnings.simplefilter("ignore")
        ids = jax.jit(lambda t: smp.sample(0, jnp.asarray(LOGITS), temperature=t))(np.float64(1e39))
    np.testing.assert_array_equal(ids, [2, 2])


# --------------------------------------------------------------------------------------------
# Messages that name the argument


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([object(), 1.0], dtype=object),
                                 np.array(["2020-01-01", "2020-01-02"], "datetime64[D]")],
                         ids=["str", "object", "datetime64"])
@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_logits_of_no_numeric_dtype(name, bad):
    if name == "jax":
        pytest.importorskip("jax")
    with pytest.raises(TypeError, match=r"logits must be a floating-point array, got dtype"):
        smp.sample(0, bad, backend=name)


@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_ragged_and_missing_logits(name):
    if name == "jax":
        pytest.importorskip("jax")
    with pytest.raises(ValueError, match=r"logits must be a rectangular array .*; got a ragged list"):
        smp.probs([[1.0, 2.0], [3.0]], backend=name)
    with pytest.raises(TypeError, match=r"logits must be a floating-point array .*, got None"):
        smp.sample(0, None, backend=name)


def test_negative_numpy_seed():
    with pytest.raises(ValueError, match="key must be a non-negative int seed.*got -1"):
        smp.sample(-1, LOGITS)


def test_seeds_past_64_bits_on_both_backends():
    jnp = pytest.importorskip("jax.numpy")
    for seed in (2**70, 2**64, -(2**70)):
        ids = smp.sample(seed, jnp.asarray(LOGITS), temperature=5.0)
        assert ids.shape == (2,)
    flat = jnp.zeros((64, 1000))
    big = [np.asarray(smp.sample(seed, flat)) for seed in (2**70, 2**70 + 1)]
    assert (big[0] != big[1]).any()  # every bit of the seed counts
    np.testing.assert_array_equal(smp.sample(2**70, LOGITS), smp.sample(np.random.default_rng(2**70), LOGITS))


# --------------------------------------------------------------------------------------------
# SamplingParams: one trace in a user's own jit


def test_sampling_params_share_one_trace_in_a_users_jit():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    traces = []

    @jax.jit
    def step(params: smp.SamplingParams, logits: Any) -> Any:
        traces.append(1)
        return smp.probs(logits, params=params)

    logits = jnp.asarray(LOGITS)
    spellings = [
        dict(temperature=0.8, top_k=2, top_p=0.9),
        dict(temperature=jnp.array(0.8), top_k=jnp.array(2), top_p=jnp.array(0.9)),
        dict(temperature=jnp.full((), 0.7), top_k=jnp.full((), 3), top_p=jnp.full((), 0.5)),
        dict(temperature=1, top_k=3, top_p=1),
        dict(temperature=np.float32(0.5), top_k=np.int64(2), top_p=np.float64(0.3)),
        dict(temperature=jnp.bfloat16(0.5), top_k=jnp.uint32(2**32 - 1), top_p=jnp.float16(0.5)),
        dict(temperature=2.0, top_k=2**40, top_p=0.99, min_keep=np.uint8(1)),
        dict(temperature=0, top_k=2.0, top_p=np.array(0.9), min_keep=jnp.int8(2)),
    ]
    for spelling in spellings:
        params = smp.SamplingParams(**spelling)
        expected = smp.probs(LOGITS, params=smp.SamplingParams(**{k: np.asarray(v, np.float64) if k in (
            "temperature", "top_p") else np.minimum(np.asarray(v, np.float64), 2**31 - 1).astype(np.int64)
            for k, v in spelling.items()}))
        np.testing.assert_allclose(step(params, logits), expected, rtol=2e-6, atol=1e-7)
    assert len(traces) == 1
    # Per-row arrays of one batch shape share one other trace.
    step(smp.SamplingParams(temperature=np.array([0.5, 1.0]), top_k=[1, 2], top_p=jnp.ones(2)), logits)
    step(smp.SamplingParams(temperature=jnp.array([1, 2]), top_k=jnp.array([1, 2], jnp.int16),
                            top_p=[0.5, 1]), logits)
    assert len(traces) == 2


def test_sampling_params_keep_eager_errors_and_import_no_jax():
    import subprocess
    import sys

    code = ("import sys, agnostic_sampling as smp; p = smp.SamplingParams(temperature=0.5, top_k=3);"
            "print(type(p.temperature).__name__, p.temperature.dtype, p.top_k.dtype, 'jax' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["ndarray", "float64", "int64", "False"], result.stderr
    for value, error in ((float("nan"), "got nan"), (-1.0, "got -1.0"), (1 + 2j, "complex")):
        with pytest.raises((ValueError, TypeError), match=error):
            smp.sample(0, LOGITS, params=smp.SamplingParams(temperature=value))
    with pytest.raises(ValueError, match=r"top_k must be an integer, got 2\.5"):
        smp.sample(0, LOGITS, params=smp.SamplingParams(top_k=2.5))


@pytest.mark.parametrize("vocab", [40, 8192])
def test_an_all_greedy_batch_is_the_argmax_under_jit(vocab):
    """A traced all-greedy batch takes `greedy`'s pass alone; one non-greedy row takes the pipeline,
    and both agree with `greedy` on the greedy rows (ties to the first index, NaN ignored, -1 for a
    row with no finite logit, +inf rows at their first +inf)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = np.random.default_rng(3).standard_normal((5, vocab)).astype(np.float32)
    x[1, [7, 3]] = 9.0  # a tie: the first index, 3
    x[2, 0] = np.nan
    x[3] = -np.inf
    x[4, [5, 2]] = np.inf
    draw = jax.jit(lambda key, x, t: smp.sample(key, x, temperature=t))
    expected = np.asarray(jax.jit(smp.greedy)(jnp.asarray(x)))  # traced: the documented values
    assert expected.tolist()[1:] == [3, int(np.nanargmax(x[2])), -1, 2]
    for temperature in (np.zeros(5), np.array([0, 1e-40, -1, np.nan, np.inf]), np.array([0, 0, 0, 0, 1.0])):
        ids = np.asarray(draw(jax.random.key(0), jnp.asarray(x), jnp.asarray(temperature, jnp.float32)))
        greedy = ~(temperature >= np.finfo(np.float32).tiny) | ~np.isfinite(temperature)
        np.testing.assert_array_equal(ids[greedy], expected[greedy])


@pytest.mark.parametrize("vocab", [4096, 3000, 200])  # whole blocks, a short last block, only that
def test_column_major_rows_and_blocks_are_copied_exactly(vocab):
    """The column-major copies of rows (a few by indexing, many from tiles of the transpose) and
    of candidate blocks (pair by pair in block order), and the block maxima (runs of several
    tokens' rows at a time when the rows are few), give those of C order."""
    for n_rows in (2, 5, 17, 300):
        few = _logits(n_rows, vocab, seed=n_rows)
        few[1, 7] = np.nan
        np.testing.assert_array_equal(pipeline._block_maxima(_fortran(few)), pipeline._block_maxima(few))
    c = _logits(48, vocab, seed=7)
    x = _fortran(c)
    rng = np.random.default_rng(7)
    n_blocks = -(-vocab // pipeline.BLOCK)
    for count in (3, _numpy_rows.MANY_ROWS, 48):
        rows = rng.choice(48, count, replace=False)  # any order
        np.testing.assert_array_equal(_numpy_rows._take_rows(x, rows), c[rows])
        blocks = np.stack([rng.choice(n_blocks, min(5, n_blocks), replace=False) for _ in rows])
        np.testing.assert_array_equal(pipeline._gather(x, rows, blocks), pipeline._gather(c, rows, blocks))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # the compute precisions
def test_many_column_major_rows_take_their_fine_bounds_from_the_columns(monkeypatch, dtype):
    """From `COLUMN_ROWS` rows, the fine mass bounds of column-major rows read the columns (no
    copy of the rows); their sums run in another order, and the kept sets and draws are still
    those of C order."""
    rng = np.random.default_rng(11)
    c = (rng.standard_normal((256, 32768)) * 2).astype(dtype)
    top = rng.uniform(16, 24, (256, 1))  # LM-like rows: a few spikes above a normal body
    c[np.arange(256)[:, None], rng.integers(0, 32768, (256, 16))] = top - np.cumsum(
        rng.exponential(1.0, (256, 16)), axis=1)
    sizes = []
    original = _numpy_mass._fine_mass_of_columns

    def fine(x: np.ndarray, rows: np.ndarray, *args: Any) -> np.ndarray:
        sizes.append(rows.size)
        return original(x, rows, *args)

    monkeypatch.setattr(_numpy_mass, "_fine_mass_of_columns", fine)
    for layout in ("fortran", "transposed"):
        x = LAYOUTS[layout](c)
        for params in ({"top_p": 0.9}, {"top_p": 0.8, "temperature": 1.3}):
            for key in (0, smp.Seed(np.arange(256), 2)):
                np.testing.assert_array_equal(smp.sample(key, x, **params), smp.sample(key, c, **params))
            np.testing.assert_array_equal(smp.process_logits(x, **params), smp.process_logits(c, **params))
    assert sizes and min(sizes) >= _numpy_mass.COLUMN_ROWS


@pytest.mark.parametrize("layout", ["fortran", "transposed"])
def test_column_major_logits_are_sampled_in_place(layout):
    """Column-major logits are read where they lie: block maxima over the columns, a copy only of
    rows that need whole-row passes; every route draws what a contiguous copy draws."""
    c = _logits(64, 20000, seed=5)
    x = LAYOUTS[layout](c)
    # Candidates only (top-k), all-greedy rows: no copy of the batch at all.
    for params in ({"top_k": 40, "temperature": 0.7, "top_p": 0.9}, {"temperature": 0.0}):
        ids, peak = _peak_memory(lambda params=params: smp.sample(0, x, **params))
        contiguous_ids, contiguous_peak = _peak_memory(lambda params=params: smp.sample(0, c, **params))
        assert peak < contiguous_peak + 0.2 * x.nbytes, (params, peak / x.nbytes, contiguous_peak / x.nbytes)
        np.testing.assert_array_equal(ids, contiguous_ids)
    # Whole-row routes (wide nuclei, dense rows and their tails, Seed keys' token-order draws).
    flat = LAYOUTS[layout](_logits(64, 20000, seed=6) * 0.05)
    contiguous = np.ascontiguousarray(flat)
    for params in ({"top_p": 0.99}, {}, {"min_p": 0.001}, {"temperature": np.tile([0.0, 2.0], 32)}):
        for key in (1, smp.Seed(np.arange(64), 3)):
            expected = smp.sample(key, contiguous, **params)
            np.testing.assert_array_equal(smp.sample(key, flat, **params), expected)
    ids, peak = _peak_memory(lambda: smp.greedy(x))  # through the block maxima, no copy either
    assert peak < 0.2 * x.nbytes, peak / x.nbytes
    np.testing.assert_array_equal(ids, smp.greedy(c))
    bad = np.array(c)
    bad[[3, 9], [17, 4000]] = [np.nan, np.inf]
    for row, error in ((3, "NaN"), (9, r"\+inf")):
        with pytest.raises(ValueError, match=rf"row {row} contains {error}"):
            smp.greedy(LAYOUTS[layout](bad))
        bad[3] = 0.0


def test_an_all_greedy_numpy_call_is_greedy_after_the_key_check(monkeypatch):
    """`sample(temperature=0)` with no other step skips the parameter table and the pipeline (a
    batch-1 call cost 3-8x `greedy` in them): the ids and errors of `greedy`, the key still
    checked, and a Generator left where the general path leaves it."""
    x = np.random.default_rng(3).standard_normal((4, 300)).astype(np.float32)
    x[1, [7, 3]] = 9.0  # a tie: the first index
    general = [smp.sample(np.random.default_rng(5), x, temperature=0.0, top_k=0)]  # the pipeline's answer
    stream = np.random.default_rng(5)
    smp.sample(stream, x, temperature=0.0, top_k=0)
    after_general = stream.random()

    from agnostic_sampling.backends import numpy as numpy_backend

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(numpy_backend, "sample", refuse)
    stream = np.random.default_rng(5)
    for key in (0, 2**70, stream, smp.Seed(np.arange(4), 1), np.random.SeedSequence(1)):
        for temperature in (0, 0.0):
            np.testing.assert_array_equal(smp.sample(key, x, temperature=temperature), general[0])
    stream = np.random.default_rng(5)
    smp.sample(stream, x, temperature=0.0)
    assert stream.random() == after_general
    with pytest.raises(ValueError, match="non-negative int seed"):
        smp.sample(-1, x, temperature=0.0)
    with pytest.raises(TypeError, match="key must be"):
        smp.sample("seed", x, temperature=0.0)
    bad = x.copy()
    bad[2, 5] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        smp.sample(0, bad, temperature=0.0)
    with pytest.raises(AssertionError, match="the pipeline ran"):  # any other step: the general path
        smp.sample(0, x, temperature=0.0, top_p=0.5)
