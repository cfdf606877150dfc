"""Benchmark: this library against the usual ways of sampling, side by side in one process.

Every implementation runs on the same logits (a normal body plus a few large spikes, like a
language model's output) and is timed after warm-up (JAX after compilation, with
``block_until_ready``); the table reports medians, the ratio to the floor (one ``np.max`` pass
over the same array, timed just before each call: no sampler can read its input faster) and the
ratio to the fastest peer.
Peers that are not installed (JAX, PyTorch, Hugging Face ``transformers``) are skipped.

Run it with ``python -m agnostic_sampling bench`` (quick: batch 64 x vocabulary 128256 and a few
growth points) or ``python -m agnostic_sampling bench --full`` (the whole grid).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

from agnostic_sampling._params import OFF

__all__ = ["TASKS", "main", "realistic_logits"]

# --------------------------------------------------------------------------------------------
# What is measured

TASKS: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "temperature": {"temperature": 0.8},
    "temp+top-k+top-p": {"temperature": 0.8, "top_k": 50, "top_p": 0.9},
    "top-p": {"top_p": 0.9},
    "min-p": {"min_p": 0.05},
    "mixed rows": {},  # per-row parameters, see _mixed_params
}

# One row of each kind, repeated down the batch: greedy, hot, top-k, nucleus, min-p, combinations.
_MIXED = [  # temperature, top_k, top_p, min_p
    (0.0, 0, 1.0, 0.0),
    (0.7, 0, 1.0, 0.0),
    (0.8, 50, 0.9, 0.0),
    (1.0, 0, 0.9, 0.0),
    (1.0, 0, 1.0, 0.05),
    (1.2, 20, 1.0, 0.0),
    (0.6, 0, 0.95, 0.0),
    (1.0, 1, 1.0, 0.0),
]

QUICK_MAIN = (64, 128256)
QUICK_GROWTH = [(1, 128256), (256, 128256), (64, 32000), (64, 262144), (64, 1048576)]
QUICK_GROWTH_TASKS = ("temperature", "temp+top-k+top-p", "top-p")
# The growth points skip the slowest peers (full sorts), which would take minutes at 2^20 tokens.
QUICK_GROWTH_IMPLS = ("floor: np.max", "floor: jnp.max (jit)", "agnostic_sampling numpy",
                      "agnostic_sampling jax (jit)", "jax lax.top_k static k (jit)",
                      "HF warpers + multinomial")
FULL_BATCHES = (1, 8, 64, 256)
FULL_VOCABS = (32000, 128256, 262144, 1048576)

LIBRARY = ("agnostic_sampling numpy", "agnostic_sampling jax (jit)")
FLOORS = ("floor: np.max", "floor: jnp.max (jit)")


def realistic_logits(batch: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Float32 logits shaped like a language model's: a normal body and a few large spikes.

    The body is N(0, 2^2). Each row has 16 spikes at random tokens; the highest sits 16 to 24
    above the body's mean (uniform per row, so some rows are confident and some are not), the
    others below it by exponential gaps of mean 1. At temperature 1 and vocabulary 128256 the
    spikes hold from 78% to over 99.999% of a row's mass (median 99.9%).

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


def _mixed_params(batch: int) -> dict[str, np.ndarray]:
    table = np.array([_MIXED[i % len(_MIXED)] for i in range(batch)])
    return {
        "temperature": table[:, 0].astype(np.float32),
        "top_k": table[:, 1].astype(np.int64),
        "top_p": table[:, 2].astype(np.float32),
        "min_p": table[:, 3].astype(np.float32),
    }


def _task_params(task: str, batch: int) -> dict[str, Any]:
    return _mixed_params(batch) if task == "mixed rows" else dict(TASKS[task])


def _per_row(params: dict[str, Any], batch: int) -> tuple[np.ndarray, ...]:
    """(temperature, top_k, top_p, min_p) as per-row arrays; identity values where off."""
    def row(name: str, dtype: Any) -> np.ndarray:
        return np.broadcast_to(np.asarray(params.get(name, OFF[name]), dtype), (batch,)).copy()

    return (row("temperature", np.float32), row("top_k", np.int64),
            row("top_p", np.float32), row("min_p", np.float32))


# --------------------------------------------------------------------------------------------
# Implementations. Each factory gets (task, params, logits) and returns a no-argument callable
# that runs one complete call and blocks until its result exists, or None if it does not apply.

Factory = Callable[[str, dict[str, Any], np.ndarray], Callable[[], Any] | None]


def _library_numpy(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any]:
    import agnostic_sampling as smp

    rng = np.random.default_rng(0)
    if task == "greedy":
        return lambda: smp.greedy(x)
    return lambda: smp.sample(rng, x, **params)


def _floor_numpy(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any]:
    return lambda: np.max(x, axis=-1)


def _sort_numpy(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any]:
    """The plain way: sort the whole row, mask, softmax, cumulative sum, inverse CDF."""
    rng = np.random.default_rng(0)
    temperature, top_k, top_p, min_p = _per_row(params, x.shape[0])
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


def _jax_available() -> bool:
    return importlib.util.find_spec("jax") is not None


def _timed_jax(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    import jax

    jitted = jax.jit(fn)
    return lambda: jax.block_until_ready(jitted(*args))


def _library_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    if not _jax_available():
        return None
    import jax
    import jax.numpy as jnp

    import agnostic_sampling as smp
    from agnostic_sampling._params import register_pytree

    register_pytree()
    xj = jnp.asarray(x)
    if task == "greedy":
        return _timed_jax(smp.greedy, xj)
    # Parameters as traced per-row arrays: new values never recompile.
    batch = x.shape[0]
    traced = smp.SamplingParams(**{name: jnp.broadcast_to(jnp.asarray(value), (batch,))
                                   for name, value in params.items()})
    return _timed_jax(lambda key, logits, prm: smp.sample(key, logits, params=prm),
                      jax.random.key(0), xj, traced)


def _floor_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    if not _jax_available():
        return None
    import jax.numpy as jnp

    return _timed_jax(lambda logits: jnp.max(logits, axis=-1), jnp.asarray(x))


def _sort_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """Sort-based JAX, jitted: jnp.sort, cumsum, jax.random.categorical."""
    if not _jax_available():
        return None
    import jax
    import jax.numpy as jnp

    temperature, top_k, top_p, min_p = (jnp.asarray(a) for a in _per_row(params, x.shape[0]))
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

    return _timed_jax(run, jax.random.key(0), jnp.asarray(x))


def _top_k_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """JAX with ``lax.top_k`` and a static k: the fast special case for top-k (+ top-p)."""
    if not _jax_available() or "top_k" not in params or np.ndim(params["top_k"]) != 0:
        return None
    import jax
    import jax.numpy as jnp

    k, temperature = int(params["top_k"]), float(params.get("temperature", 1.0))
    top_p = float(params.get("top_p", 1.0))

    def run(key: Any, logits: Any) -> Any:
        values, index = jax.lax.top_k(logits / temperature, k)
        p = jax.nn.softmax(values, axis=-1)
        before = jnp.cumsum(p, axis=-1) - p
        values = jnp.where(before < top_p, values, -jnp.inf)
        choice = jax.random.categorical(key, values, axis=-1)
        return jnp.take_along_axis(index, choice[:, None], axis=-1)[:, 0]

    return _timed_jax(run, jax.random.key(0), jnp.asarray(x))


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _scalar_params(params: dict[str, Any]) -> bool:
    return all(np.ndim(value) == 0 for value in params.values())


def _seed_torch(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """The seed tutorial's PyTorch way: topk / sort + cumsum masks, softmax, multinomial."""
    if not _torch_available() or not _scalar_params(params):
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


def _hf_warpers(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    """Hugging Face's logits warpers chained, then ``torch.multinomial`` (one thread)."""
    if task == "greedy" or not _scalar_params(params) or importlib.util.find_spec("transformers") is None:
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


IMPLEMENTATIONS: dict[str, Factory] = {
    "floor: np.max": _floor_numpy,
    "floor: jnp.max (jit)": _floor_jax,
    "agnostic_sampling numpy": _library_numpy,
    "agnostic_sampling jax (jit)": _library_jax,
    "numpy sort": _sort_numpy,
    "jax sort (jit)": _sort_jax,
    "jax lax.top_k static k (jit)": _top_k_jax,
    "torch seed tutorial": _seed_torch,
    "HF warpers + multinomial": _hf_warpers,
}


# --------------------------------------------------------------------------------------------
# Timing


@dataclass
class Result:
    """One implementation on one task and shape."""

    batch: int
    vocab: int
    task: str
    implementation: str
    median_ms: float
    times_ms: list[float] = field(default_factory=list)
    floor_ms: float | None = None  # median of np.max over the same logits, timed beside each call
    vs_floor: float | None = None
    vs_best_peer: float | None = None
    peak_extra_bytes: int | None = None
    logits_bytes: int | None = None


def _time(run: Callable[[], Any], repeats: int, budget_s: float,
          floor: Callable[[], Any]) -> tuple[list[float], list[float]]:
    """Wall times in ms of ``run`` and of ``floor`` run just before it, call after call.

    Two warm-up calls first (compilation, caches), then up to ``repeats`` pairs. Pairing the
    floor with each call keeps their ratio meaningful on a machine whose load drifts.
    """
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    if first < budget_s:
        run()
    times: list[float] = []
    floor_times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (len(times) < 3 or spent < budget_s):
        gc.collect()
        start = time.perf_counter()
        floor()
        middle = time.perf_counter()
        run()
        end = time.perf_counter()
        floor_times.append((middle - start) * 1e3)
        times.append((end - middle) * 1e3)
        spent += end - middle
        if first > budget_s:  # very slow peers: one timed call is all the budget allows
            break
    return times, floor_times


def _peak_extra_bytes(run: Callable[[], Any]) -> int:
    """Peak memory that one call allocates beyond what existed before it (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _is_peer(name: str) -> bool:
    return name not in LIBRARY and name not in FLOORS


def run_benchmark(shapes: list[tuple[int, int, tuple[str, ...], tuple[str, ...] | None]],
                  implementations: list[str], repeats: int, budget_s: float, seed: int,
                  log: Callable[[str], None]) -> list[Result]:
    """Time the implementations on every (batch, vocab, tasks, only these implementations or None)
    entry of ``shapes``."""
    results: list[Result] = []
    for batch, vocab, tasks, only in shapes:
        x = realistic_logits(batch, vocab, seed)
        floor = _floor_numpy("", {}, x)
        for task in tasks:
            params = _task_params(task, batch)
            task_results = []
            for name in implementations:
                if only is not None and name not in only:
                    continue
                run = IMPLEMENTATIONS[name](task, params, x)
                if run is None:
                    continue
                times, floor_times = _time(run, repeats, budget_s, floor)
                result = Result(batch, vocab, task, name, statistics.median(times), times,
                                statistics.median(floor_times))
                result.vs_floor = result.median_ms / result.floor_ms
                if name == "agnostic_sampling numpy":
                    result.peak_extra_bytes = _peak_extra_bytes(run)
                    result.logits_bytes = x.nbytes
                task_results.append(result)
                log(f"{batch:>4} x {vocab:<8} {task:<18} {name:<30} {result.median_ms:10.2f} ms")
                del run
                gc.collect()
            peers = [r.median_ms for r in task_results if _is_peer(r.implementation)]
            for result in task_results:
                if peers:
                    result.vs_best_peer = result.median_ms / min(peers)
            results.extend(task_results)
    return results


# --------------------------------------------------------------------------------------------
# Reporting


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
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


def _ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def markdown(results: list[Result]) -> str:
    """One table per shape: each implementation's median, its ratios, the library's memory."""
    lines: list[str] = []
    shapes = sorted({(r.batch, r.vocab) for r in results}, key=lambda s: (s != QUICK_MAIN, s[1], s[0]))
    for batch, vocab in shapes:
        lines += [f"#### batch {batch} x vocabulary {vocab}", "",
                  "| task | implementation | median ms | x floor | x best peer | peak extra memory |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in results:
            if (r.batch, r.vocab) != (batch, vocab):
                continue
            memory = "" if r.peak_extra_bytes is None else (
                f"{r.peak_extra_bytes / 2**20:.1f} MiB ({r.peak_extra_bytes / r.logits_bytes:.2f}x logits)")
            name = f"**{r.implementation}**" if r.implementation in LIBRARY else r.implementation
            lines.append(f"| {r.task} | {name} | {r.median_ms:.2f} | {_ratio(r.vs_floor)} | "
                         f"{_ratio(r.vs_best_peer)} | {memory} |")
        lines.append("")
    return "\n".join(lines)


def _shapes(args: argparse.Namespace) -> list[tuple[int, int, tuple[str, ...], tuple[str, ...] | None]]:
    tasks = tuple(args.tasks) if args.tasks else tuple(TASKS)
    if args.batch or args.vocab or args.full:
        batches = args.batch or (FULL_BATCHES if args.full else (QUICK_MAIN[0],))
        vocabs = args.vocab or (FULL_VOCABS if args.full else (QUICK_MAIN[1],))
        return [(b, v, tasks, None) for v in vocabs for b in batches]
    growth = tuple(t for t in QUICK_GROWTH_TASKS if t in tasks)
    only = None if args.impl else QUICK_GROWTH_IMPLS
    return [(*QUICK_MAIN, tasks, None)] + ([(b, v, growth, only) for b, v in QUICK_GROWTH] if growth else [])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agnostic_sampling bench",
        description="Time sample() against sort-based NumPy/JAX, lax.top_k, PyTorch and Hugging Face, "
                    "side by side on the same logits.")
    parser.add_argument("--full", action="store_true",
                        help="the whole grid: batch 1, 8, 64, 256 x vocabulary 32000 .. 1048576 (slow)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes (overrides the grid)")
    parser.add_argument("--vocab", type=int, nargs="+", help="vocabulary sizes (overrides the grid)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), metavar="TASK",
                        help=f"tasks to run (default all): {', '.join(TASKS)}")
    parser.add_argument("--impl", nargs="+", choices=list(IMPLEMENTATIONS), metavar="NAME",
                        help="implementations to run (default all available)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (default 7)")
    parser.add_argument("--budget", type=float, default=4.0,
                        help="seconds per measurement after which repeats stop at 3 (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the logits (default 0)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="folder for the JSON and markdown results (default benchmarks/results)")
    parser.add_argument("--name", default=None, help="file name stem (default bench-quick or bench-full)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, and save it as JSON and markdown.

    Example:
        >>> main(["--batch", "2", "--vocab", "1000", "--tasks", "greedy", "--impl", "floor: np.max",
        ...       "agnostic_sampling numpy", "--repeats", "3", "--no-save"])  # doctest: +ELLIPSIS
        Command: `python -m agnostic_sampling bench --batch 2 ...
        0
    """
    args = _parser().parse_args(argv)
    implementations = args.impl or list(IMPLEMENTATIONS)
    if "floor: np.max" not in implementations:
        implementations.insert(0, "floor: np.max")
    command = "python -m agnostic_sampling bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started = datetime.datetime.now(datetime.UTC)
    results = run_benchmark(_shapes(args), implementations, args.repeats, args.budget, args.seed,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    table = markdown(results)
    info = machine()
    header = (f"Command: `{command.strip()}`  \nMachine: {info.get('cpu', '?')}, {info['cpus']} CPUs, "
              f"{info['platform']}; numpy {info['numpy']}"
              + "".join(f", {m} {info[m]}" for m in ("jax", "torch", "transformers") if m in info)
              + f"  \nStarted {started:%Y-%m-%d %H:%M} UTC; medians of up to {args.repeats} calls "
              "after warm-up.\n")
    print(header)
    print(table)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.name or ("bench-full" if args.full else "bench-quick")
        payload = {"command": command.strip(), "started_utc": started.isoformat(), "machine": info,
                   "logits": realistic_logits.__doc__.split("\n\n")[1].strip(),
                   "results": [asdict(r) for r in results]}
        (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(header + "\n" + table)
        print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    return 0
