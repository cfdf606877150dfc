"""What every benchmark script here shares: timing, machine info, the logits, the peers.

- `time_calls`: ``timeit`` timings of a no-argument callable after warm-up, one call per
  measurement, optionally paired call by call with a reference (the ``np.max`` floor); report
  medians.
- `machine` and `machine_line`: what the numbers were measured on.
- `realistic_logits`: float32 logits shaped like a language model's.
- The peers: the sort-based pipelines and special cases that codebases write today (NumPy, JAX,
  PyTorch, Hugging Face), as factories for `benchmarks/bench.py` and as plain JAX functions for
  `benchmarks/jax_vs_peers.py` and `benchmarks/sharded.py`.

The scripts beside this file import it as ``harness`` (a script's own folder is on ``sys.path``);
tests and ``python -m agnostic_sampling bench`` put this folder on ``sys.path`` first. Nothing
here is part of the installed package.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import numpy as np

from agnostic_sampling._params import OFF

# --------------------------------------------------------------------------------------------
# Timing


class Timing(NamedTuple):
    """Wall times in milliseconds of the timed calls, and of the paired reference calls."""

    times_ms: list[float]
    paired_ms: list[float]

    @property
    def median_ms(self) -> float:
        """Median of the timed calls."""
        return statistics.median(self.times_ms)

    @property
    def paired_median_ms(self) -> float | None:
        """Median of the paired reference calls (``None`` without a reference)."""
        return statistics.median(self.paired_ms) if self.paired_ms else None


def time_calls(run: Callable[[], Any], *, repeat: int = 7, warmup: int = 2, budget_s: float = math.inf,
               paired: Callable[[], Any] | None = None) -> Timing:
    """Time ``run`` with ``timeit``, one call per measurement, after ``warmup`` calls.

    ``run`` must block until its result exists (``jax.block_until_ready`` for JAX). Before each
    timed call, ``paired`` (if given) is timed just before it, so that the ratio of the two stays
    meaningful on a machine whose load drifts. Measurements stop at ``repeat``, or, once three
    exist, when the timed calls have used ``budget_s`` seconds. A first call slower than
    ``budget_s`` (a very slow peer) skips the other warm-up calls and is followed by one timed
    call only. Garbage is collected before each measurement (``timeit`` turns the collector off
    while it times).

    Args:
        run: the call to time, with no arguments.
        repeat: the most timed calls.
        warmup: untimed calls first (compilation, caches); at least 1.
        budget_s: seconds of timed calls after which measurements stop at three.
        paired: a reference call to time just before each timed call.

    Returns:
        A `Timing` with every measurement; ``median_ms`` is what the tables report.

    Example:
        >>> timing = time_calls(lambda: sum(range(100)), repeat=5)
        >>> len(timing.times_ms), timing.median_ms > 0, timing.paired_median_ms
        (5, True, None)
    """
    first = timeit.timeit(run, number=1)
    for _ in range(warmup - 1):
        if first >= budget_s:
            break
        run()
    times: list[float] = []
    paired_times: list[float] = []
    spent = 0.0
    while len(times) < repeat and (len(times) < 3 or spent < budget_s):
        gc.collect()
        if paired is not None:
            paired_times.append(timeit.timeit(paired, number=1) * 1e3)
        seconds = timeit.timeit(run, number=1)
        times.append(seconds * 1e3)
        spent += seconds
        if first > budget_s:  # one timed call is all the budget allows
            break
    return Timing(times, paired_times)


# --------------------------------------------------------------------------------------------
# The machine


def machine() -> dict[str, Any]:
    """What the numbers were measured on: platform, Python, CPU, library versions, JAX device.

    Versions of JAX, PyTorch and ``transformers`` are read from their metadata, without importing
    them; the JAX device is named only when the run has imported JAX.

    Returns:
        A JSON-ready dict (``platform``, ``python``, ``cpus``, ``numpy``, and where known ``cpu``,
        ``jax``, ``torch``, ``transformers``, ``jax_device``).

    Example:
        >>> info = machine()
        >>> sorted(set(info) & {"cpus", "numpy", "platform", "python"})
        ['cpus', 'numpy', 'platform', 'python']
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
    }
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        if models:
            info["cpu"] = models[0]
    except OSError:
        pass
    for module in ("jax", "torch", "transformers"):
        if importlib.util.find_spec(module) is not None:
            info[module] = importlib.metadata.version(module)  # no import: torch takes seconds
    if "jax" in sys.modules:  # only when the run used it
        info["jax_device"] = str(sys.modules["jax"].devices()[0].device_kind)
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """`machine` in one line, for the head of a script's output.

    Example:
        >>> "numpy" in machine_line()
        True
    """
    info = machine() if info is None else info
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{info.get('cpu', platform.machine())}, {info['cpus']} CPUs, {info['platform']}; "
            f"Python {info['python']}, numpy {info['numpy']}"
            + "".join(f", {m} {info[m]}" for m in ("jax", "torch", "transformers") if m in info)
            + (f" ({info['jax_device']})" if "jax_device" in info else "") + load)


# --------------------------------------------------------------------------------------------
# The logits


def realistic_logits(batch: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Float32 logits shaped like a language model's: a normal body and a few large spikes.

    The body is N(0, 2^2). Each row has 16 spikes at random tokens; the highest sits 16 to 24
    above the body's mean (uniform per row, so some rows are confident and some are not), the
    others below it by exponential gaps of mean 1. At temperature 1 and vocabulary 128256 the
    spikes hold from 78% to over 99.999% of a row's mass (median 99.9%).

    Args:
        batch: rows.
        vocab: tokens per row.
        seed: seed of the NumPy generator.

    Returns:
        A float32 array of shape ``(batch, vocab)``.

    Example:
        >>> realistic_logits(2, 1000).shape
        (2, 1000)
    """
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((batch, vocab), np.float32) * 2).astype(np.float32)
    spikes = min(16, vocab)
    peak = rng.uniform(16, 24, (batch, 1))
    heights = peak - np.cumsum(rng.exponential(1.0, (batch, spikes)), axis=1) + 1.0
    columns = np.stack([rng.choice(vocab, spikes, replace=False) for _ in range(batch)])
    np.put_along_axis(logits, columns, heights.astype(np.float32), axis=1)
    return logits


def flat_logits(batch: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Float32 logits that are the worst case for top-p: a N(0, 2^2) body and 20 low spikes.

    The same 20 tokens of every row sit 8 above the body, so at temperature 1 and vocabulary
    128256 every row's 0.9-nucleus holds about 24,000 tokens: past any list of candidates.

    Example:
        >>> flat_logits(2, 1000).shape
        (2, 1000)
    """
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((batch, vocab)) * 2).astype(np.float32)
    logits[:, rng.integers(0, vocab, 20)] += 8
    return logits


def per_row(params: dict[str, Any], batch: int) -> tuple[np.ndarray, ...]:
    """(temperature, top_k, top_p, min_p) as per-row arrays, the off value where not given.

    Example:
        >>> [a.tolist() for a in per_row({"top_k": 5}, 2)]
        [[1.0, 1.0], [5, 5], [1.0, 1.0], [0.0, 0.0]]
    """
    def row(name: str, dtype: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(params.get(name, OFF[name]), dtype), (batch,)).copy()

    return (row("temperature", np.float32), row("top_k", np.int64),
            row("top_p", np.float32), row("min_p", np.float32))


# --------------------------------------------------------------------------------------------
# Peers for bench.py. Each factory gets (task, params, logits) and returns a no-argument callable
# that runs one complete call and blocks until its result exists, or None if it does not apply
# (a library not installed, per-row parameters a peer cannot take).

Factory = Callable[[str, dict[str, Any], np.ndarray], Callable[[], Any] | None]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def jitted_call(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``jax.jit(fn)`` applied to ``args``, as a no-argument call that blocks on its result."""
    import jax

    jitted = jax.jit(fn)
    return lambda: jax.block_until_ready(jitted(*args))


def floor_numpy(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any]:
    """One ``np.max`` pass over the logits: no sampler can read its input faster."""
    return lambda: np.max(x, axis=-1)


def floor_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """One jitted ``jnp.max`` pass: the floor for the JAX implementations."""
    if not installed("jax"):
        return None
    import jax.numpy as jnp

    return jitted_call(lambda logits: jnp.max(logits, axis=-1), jnp.asarray(x))


def sort_numpy(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any]:
    """The plain way: sort the whole row, mask, softmax, cumulative sum, inverse CDF."""
    rng = np.random.default_rng(0)
    temperature, top_k, top_p, min_p = per_row(params, x.shape[0])
    greedy = temperature == 0
    truncating = bool((top_k > 0).any() or (top_p < 1).any() or (min_p > 0).any())
    rows = np.arange(x.shape[0])

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def run() -> np.ndarray:
        if task == "greedy":
            return np.argmax(x, axis=-1)
        z = x / np.where(greedy, 1, temperature)[:, None]
        order = None
        if truncating:
            order = np.argsort(-z, axis=-1)
            z = np.take_along_axis(z, order, axis=-1)
            position = np.arange(z.shape[1])
            z[(top_k[:, None] > 0) & (position >= top_k[:, None])] = -np.inf
            p = softmax(z)
            z[(np.cumsum(p, axis=-1) - p >= top_p[:, None]) & (top_p[:, None] < 1)] = -np.inf
            z[z < z[:, :1] + np.log(np.maximum(min_p, 1e-30))[:, None]] = -np.inf
        cumulative = np.cumsum(softmax(z), axis=-1)
        position = np.minimum((cumulative < rng.random((x.shape[0], 1))).sum(axis=-1), z.shape[1] - 1)
        ids = position if order is None else order[rows, position]
        return np.where(greedy, np.argmax(x, axis=-1), ids)

    return run


def sort_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """Sort-based JAX with per-row parameters, jitted: ``jnp.sort``, cumsum, categorical."""
    if not installed("jax"):
        return None
    import jax
    import jax.numpy as jnp

    temperature, top_k, top_p, min_p = (jnp.asarray(a) for a in per_row(params, x.shape[0]))
    truncating = bool((np.asarray(top_k) > 0).any() or (np.asarray(top_p) < 1).any()
                      or (np.asarray(min_p) > 0).any())

    def run(key: Any, logits: Any) -> Any:
        if task == "greedy":
            return jnp.argmax(logits, axis=-1)
        greedy = temperature == 0
        z = logits / jnp.where(greedy, 1, temperature)[:, None]
        if truncating:
            sorted_z = -jnp.sort(-z, axis=-1)
            position = jnp.arange(z.shape[1])
            kth = jnp.take_along_axis(sorted_z, jnp.clip(top_k - 1, 0)[:, None], axis=-1)
            cut = jnp.where(top_k[:, None] > 0, kth, -jnp.inf)
            sorted_z = jnp.where(sorted_z >= cut, sorted_z, -jnp.inf)
            p = jax.nn.softmax(sorted_z, axis=-1)
            before = jnp.cumsum(p, axis=-1) - p
            inside = (before < top_p[:, None]) | (position == 0)
            last = jnp.min(jnp.where(inside, sorted_z, jnp.inf), axis=-1, keepdims=True)
            cut = jnp.maximum(cut, jnp.where(top_p[:, None] < 1, last, -jnp.inf))
            cut = jnp.maximum(cut, sorted_z[:, :1] + jnp.log(jnp.maximum(min_p, 1e-30))[:, None])
            z = jnp.where(z >= cut, z, -jnp.inf)
        ids = jax.random.categorical(key, z, axis=-1)
        return jnp.where(greedy, jnp.argmax(logits, axis=-1), ids)

    return jitted_call(run, jax.random.key(0), jnp.asarray(x))


def top_k_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """JAX with ``lax.top_k`` and a static k: the fast special case for top-k (+ top-p)."""
    if not installed("jax") or "top_k" not in params or np.ndim(params["top_k"]) != 0:
        return None
    import jax
    import jax.numpy as jnp

    k, temperature = int(params["top_k"]), float(params.get("temperature", 1.0))
    top_p = float(params.get("top_p", 1.0))
    return jitted_call(lambda key, logits: static_top_k(key, logits, temperature, top_p, k=k),
                       jax.random.key(0), jnp.asarray(x))


def _scalar_params(params: dict[str, Any]) -> bool:
    return all(np.ndim(value) == 0 for value in params.values())


def seed_torch(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """The seed tutorial's PyTorch way: topk / sort + cumsum masks, softmax, multinomial."""
    if not installed("torch") or not _scalar_params(params):
        return None
    import torch

    torch.set_num_threads(1)
    logits = torch.from_numpy(x)
    generator = torch.Generator().manual_seed(0)
    temperature = float(params.get("temperature", 1.0))
    top_k, top_p = int(params.get("top_k", 0)), float(params.get("top_p", 1.0))
    min_p = float(params.get("min_p", 0.0))

    def run() -> Any:
        if task == "greedy":
            return torch.argmax(logits, dim=-1)
        z = logits / temperature
        if top_k:
            kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
            z = torch.where(z < kth, torch.tensor(float("-inf")), z)
        if top_p < 1:
            sorted_z, order = torch.sort(z, dim=-1, descending=True)
            p = torch.softmax(sorted_z, dim=-1)
            remove = torch.cumsum(p, dim=-1) - p >= top_p
            sorted_z = sorted_z.masked_fill(remove, float("-inf"))
            z = torch.empty_like(z).scatter_(-1, order, sorted_z)
        if min_p:
            p = torch.softmax(z, dim=-1)
            z = z.masked_fill(p < min_p * p.max(dim=-1, keepdim=True).values, float("-inf"))
        return torch.multinomial(torch.softmax(z, dim=-1), 1, generator=generator)

    return run


def hf_warpers(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """Hugging Face's logits warpers chained, then ``torch.multinomial`` (one thread)."""
    if task == "greedy" or not _scalar_params(params) or not installed("transformers"):
        return None
    import torch
    from transformers.generation.logits_process import LogitsProcessorList
    from transformers.generation.logits_process import MinPLogitsWarper
    from transformers.generation.logits_process import TemperatureLogitsWarper
    from transformers.generation.logits_process import TopKLogitsWarper
    from transformers.generation.logits_process import TopPLogitsWarper

    torch.set_num_threads(1)
    chain = LogitsProcessorList()
    if params.get("temperature", 1.0) != 1.0:
        chain.append(TemperatureLogitsWarper(float(params["temperature"])))
    if params.get("top_k"):
        chain.append(TopKLogitsWarper(int(params["top_k"])))
    if params.get("top_p", 1.0) < 1:
        chain.append(TopPLogitsWarper(float(params["top_p"])))
    if params.get("min_p"):
        chain.append(MinPLogitsWarper(float(params["min_p"])))
    logits = torch.from_numpy(x)
    input_ids = torch.zeros((x.shape[0], 1), dtype=torch.long)
    generator = torch.Generator().manual_seed(0)

    def run() -> Any:
        scores = chain(input_ids, logits.clone())  # some warpers write in place
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator)

    return run


# --------------------------------------------------------------------------------------------
# Peers as plain JAX functions (jax_vs_peers.py, sharded.py): scalar parameters, as JAX
# codebases write them. Jit them yourself.


def sort_top_p(key: Any, logits: Any, temperature: float, top_p: float, top_k: int | None = None) -> Any:
    """The common full-sort sampler: sort, (top-k by position,) cumulative softmax, categorical.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([[0.0, 5.0, 1.0]])
        >>> int(sort_top_p(jax.random.key(0), x, 1.0, 0.5)[0])
        1
    """
    import jax
    import jax.numpy as jnp

    z = logits / temperature
    order = jnp.argsort(-z, axis=-1)
    ordered = jnp.take_along_axis(z, order, axis=-1)
    if top_k is not None:
        ordered = jnp.where(jnp.arange(z.shape[-1]) < top_k, ordered, -jnp.inf)
    q = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(q, axis=-1) - q
    ordered = jnp.where(mass_before < top_p, ordered, -jnp.inf)
    position = jax.random.categorical(key, ordered, axis=-1)
    return jnp.take_along_axis(order, position[:, None], axis=-1)[:, 0]


def static_top_k(key: Any, logits: Any, temperature: float, top_p: float, *, k: int) -> Any:
    """``lax.top_k`` with a static k, then top-p among the k candidates, then categorical.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.array([[0.0, 5.0, 1.0]])
        >>> int(static_top_k(jax.random.key(0), x, 1.0, 1.0, k=1)[0])
        1
    """
    import jax
    import jax.numpy as jnp

    values, index = jax.lax.top_k(logits / temperature, k)
    q = jax.nn.softmax(values, axis=-1)
    mass_before = jnp.cumsum(q, axis=-1) - q
    values = jnp.where(mass_before < top_p, values, -jnp.inf)
    position = jax.random.categorical(key, values, axis=-1)
    return jnp.take_along_axis(index, position[:, None], axis=-1)[:, 0]
