"""This library against the usual ways of sampling, side by side in one process.

Every implementation runs on the same logits (`harness.realistic_logits`: a normal body plus a few
large spikes, like a language model's output) and is timed after warm-up (JAX after compilation,
with ``block_until_ready``); the table reports medians, the ratio to the floor (one ``np.max``
pass over the same array, timed just before each call: no sampler can read its input faster) and
the ratio to the fastest peer. Peers that are not installed (JAX, PyTorch, Hugging Face
``transformers``) are skipped. Results go to ``benchmarks/results/`` as JSON and markdown.

    python benchmarks/bench.py            # quick: batch 64 x vocabulary 128256 + growth points
    python benchmarks/bench.py --full     # batch 1, 8, 64, 256 x vocabulary 32000 .. 1048576

``python -m agnostic_sampling bench`` runs this script from a source checkout.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np

import harness

__all__ = ["IMPLEMENTATIONS", "TASKS", "main", "run_benchmark"]

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


# --------------------------------------------------------------------------------------------
# This library, beside the peers of the harness


def _library_numpy(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any]:
    import agnostic_sampling as smp

    rng = np.random.default_rng(0)
    if task == "greedy":
        return lambda: smp.greedy(x)
    return lambda: smp.sample(rng, x, **params)


def _library_jax(task: str, params: dict[str, Any], x: np.ndarray) -> Callable[[], Any] | None:
    if not harness.installed("jax"):
        return None
    import jax
    import jax.numpy as jnp

    import agnostic_sampling as smp

    xj = jnp.asarray(x)
    if task == "greedy":
        return harness.jitted_call(smp.greedy, xj)
    # Parameters as traced per-row arrays: new values never recompile.
    batch = x.shape[0]
    traced = smp.SamplingParams(**{name: jnp.broadcast_to(jnp.asarray(value), (batch,))
                                   for name, value in params.items()})
    return harness.jitted_call(lambda key, logits, prm: smp.sample(key, logits, params=prm),
                               jax.random.key(0), xj, traced)


IMPLEMENTATIONS: dict[str, harness.Factory] = {
    "floor: np.max": harness.floor_numpy,
    "floor: jnp.max (jit)": harness.floor_jax,
    "agnostic_sampling numpy": _library_numpy,
    "agnostic_sampling jax (jit)": _library_jax,
    "numpy sort": harness.sort_numpy,
    "jax sort (jit)": harness.sort_jax,
    "jax lax.top_k static k (jit)": harness.top_k_jax,
    "torch seed tutorial": harness.seed_torch,
    "HF warpers + multinomial": harness.hf_warpers,
}


# --------------------------------------------------------------------------------------------
# Running


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


Shape = tuple[int, int, tuple[str, ...], tuple[str, ...] | None]


def run_benchmark(shapes: list[Shape], implementations: list[str], repeats: int, budget_s: float,
                  seed: int, log: Callable[[str], None]) -> list[Result]:
    """Time the implementations on every shape.

    Args:
        shapes: (batch, vocab, tasks, only these implementations or None) entries.
        implementations: names from `IMPLEMENTATIONS`.
        repeats: the most timed calls per measurement.
        budget_s: seconds per measurement after which repeats stop at three.
        seed: seed of the logits.
        log: called with one line per measurement.

    Returns:
        One `Result` per implementation, task and shape, with its ratios filled in.

    Example:
        >>> [r.implementation for r in run_benchmark([(2, 300, ("top-p",), None)],
        ...                                          ["floor: np.max", "numpy sort"], 3, 1.0, 0, print)
        ...  ]  # doctest: +ELLIPSIS
           2 x 300      top-p              floor: np.max ...
        ['floor: np.max', 'numpy sort']
    """
    results: list[Result] = []
    for batch, vocab, tasks, only in shapes:
        x = harness.realistic_logits(batch, vocab, seed)
        floor = harness.floor_numpy("", {}, x)
        for task in tasks:
            params = _task_params(task, batch)
            task_results = []
            for name in implementations:
                if only is not None and name not in only:
                    continue
                run = IMPLEMENTATIONS[name](task, params, x)
                if run is None:
                    continue
                timing = harness.time_calls(run, repeat=repeats, budget_s=budget_s, paired=floor)
                result = Result(batch, vocab, task, name, timing.median_ms, timing.times_ms,
                                timing.paired_median_ms)
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


def _shapes(args: argparse.Namespace) -> list[Shape]:
    tasks = tuple(args.tasks) if args.tasks else tuple(TASKS)
    if args.batch or args.vocab or args.full:
        batches = args.batch or (FULL_BATCHES if args.full else (QUICK_MAIN[0],))
        vocabs = args.vocab or (FULL_VOCABS if args.full else (QUICK_MAIN[1],))
        return [(b, v, tasks, None) for v in vocabs for b in batches]
    growth = tuple(t for t in QUICK_GROWTH_TASKS if t in tasks)
    only = None if args.impl else QUICK_GROWTH_IMPLS
    return [(*QUICK_MAIN, tasks, None)] + ([(b, v, growth, only) for b, v in QUICK_GROWTH] if growth else [])


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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


def main(argv: list[str] | None = None, prog: str = "python benchmarks/bench.py") -> int:
    """Run the benchmark, print the table, and save it as JSON and markdown.

    Args:
        argv: the options (default ``sys.argv[1:]``); ``--help`` lists them.
        prog: the command as the results should name it.

    Returns:
        The exit code, 0.

    Example:
        >>> main(["--batch", "2", "--vocab", "1000", "--tasks", "greedy", "--impl", "floor: np.max",
        ...       "agnostic_sampling numpy", "--repeats", "3", "--no-save"])  # doctest: +ELLIPSIS
        Command: `python benchmarks/bench.py --batch 2 ...
        0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    implementations = args.impl or list(IMPLEMENTATIONS)
    if "floor: np.max" not in implementations:
        implementations.insert(0, "floor: np.max")
    command = " ".join([prog, *argv])
    started = datetime.datetime.now(datetime.UTC)
    results = run_benchmark(_shapes(args), implementations, args.repeats, args.budget, args.seed,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    table = markdown(results)
    info = harness.machine()
    header = (f"Command: `{command}`  \nMachine: {info.get('cpu', '?')}, {info['cpus']} CPUs, "
              f"{info['platform']}; numpy {info['numpy']}"
              + "".join(f", {m} {info[m]}" for m in ("jax", "torch", "transformers") if m in info)
              + f"  \nStarted {started:%Y-%m-%d %H:%M} UTC; medians of up to {args.repeats} calls "
              "after warm-up.\n")
    print(header)
    print(table)
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.name or ("bench-full" if args.full else "bench-quick")
        payload = {"command": command, "started_utc": started.isoformat(), "machine": info,
                   "logits": harness.realistic_logits.__doc__.split("\n\n")[1].strip(),
                   "results": [asdict(r) for r in results]}
        (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
        (args.out / f"{stem}.md").write_text(header + "\n" + table)
        print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
