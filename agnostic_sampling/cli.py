"""The command line: ``agnostic-sampling demo | verify | bench`` (also ``python -m agnostic_sampling``).

Exit codes scripts can rely on: 0 success, 1 a verification failed, 2 a usage error or a missing
optional dependency (the message says what to install).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """The command cannot run as asked (exit code 2); the message says why and what to do."""


class _MissingDependency(_UsageError):
    """An optional dependency or module is absent; the message says what to install."""


def _backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("numpy", "jax"), default="numpy",
                        help="the array library to run on (default: numpy)")


def _check_backend(name: str) -> None:
    """Fail early, with an install hint, if ``name`` cannot be loaded."""
    from agnostic_sampling._dispatch import get_backend

    try:
        get_backend(name)
    except ImportError as error:
        hint = "pip install 'agnostic-sampling[jax]'" if name == "jax" else str(error)
        raise _MissingDependency(f"the {name} backend is not available ({error}); {hint}") from error


def _import_optional(module: str, purpose: str) -> ModuleType:
    """Import a part of the package that may not exist in this version, or say so."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name == module or module.startswith(f"{error.name}."):
            raise _MissingDependency(f"{purpose} needs {module}, which this version does not have") from error
        raise _MissingDependency(f"{purpose} needs {error.name}: pip install {error.name}") from error


def _run_demo(args: argparse.Namespace) -> int:
    from agnostic_sampling import _demo as demo

    _check_backend(args.backend)
    if args.plot is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise _MissingDependency("--plot needs matplotlib: pip install 'agnostic-sampling[plot]'")
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):  # found now, not after the demo has run
            raise _UsageError(f"--plot {args.plot}: the folder {folder} does not exist")
    demo.run_demo(args.backend, seed=args.seed, draws=args.draws)
    if args.plot is not None:
        demo.plot(args.plot, args.backend)
        print(f"wrote {args.plot}")
    return EXIT_OK


class _ProgressBar:
    """A progress bar on stderr: ``[#####     ] 5/10 label``, redrawn in place on a terminal.

    Into a file or a pipe (a CI log) it writes one line per update instead, since a carriage
    return there leaves every intermediate state in the log.
    """

    def __init__(self, stream: Any = None, width: int = 30):
        self.stream = sys.stderr if stream is None else stream
        self.width = width
        self.in_place = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int, label: str = "") -> None:
        filled = round(self.width * done / total) if total else self.width
        line = f"[{'#' * filled}{' ' * (self.width - filled)}] {done}/{total} {label}"
        if self.in_place:
            self.stream.write("\r" + line.ljust(self.width + 50) + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _row_failed(row: Any) -> bool:
    """Whether one row of the verification table is a failure."""
    for name in ("passed", "ok"):
        value = row.get(name) if isinstance(row, dict) else getattr(row, name, None)
        if value is not None:
            return not value
    verdict = row.get("verdict") if isinstance(row, dict) else getattr(row, "verdict", None)
    return str(verdict).lower() not in {"ok", "pass", "passed"}


def _run_verify(args: argparse.Namespace) -> int:
    _check_backend(args.backend)
    if importlib.util.find_spec("scipy") is None:
        raise _MissingDependency("verify needs SciPy: pip install 'agnostic-sampling[stats]'")
    verify = _import_optional("agnostic_sampling._verify", "verify")
    keywords: dict[str, Any] = {"backend": args.backend, "progress": _ProgressBar(), "seed": args.seed}
    if args.n is not None:
        keywords["n"] = args.n
    try:
        rows = verify.run_verification(**keywords)
    except ValueError as error:  # a value the verification refuses, such as too few draws
        raise _UsageError(str(error)) from error
    print(verify.format_table(rows))
    return EXIT_FAILED if any(_row_failed(row) for row in rows) else EXIT_OK


# The benchmarks live in the repository's benchmarks/ folder, beside the package, not in it.
_BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_bench() -> ModuleType:
    """Import ``benchmarks/bench.py`` of the source checkout this package was imported from."""
    script = _BENCHMARKS / "bench.py"
    if not script.is_file():
        raise _MissingDependency(
            "bench runs the benchmarks of a source checkout, and this installation has none "
            f"({script} does not exist); in a clone of the repository, run "
            "'python -m agnostic_sampling bench' from its root, or 'python benchmarks/bench.py'")
    if str(_BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(_BENCHMARKS))  # bench.py imports harness.py beside it
    spec = importlib.util.spec_from_file_location("_agnostic_sampling_bench", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _run_bench(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        bench = _load_bench()
    except _MissingDependency:
        if args.bench_help:  # the help still answers, and says what bench would do
            args.parser.print_help()
            return EXIT_OK
        raise
    forwarded = rest + (["--help"] if args.bench_help else [])
    try:
        code = bench.main(forwarded, prog="python -m agnostic_sampling bench")
    except SystemExit as exit_:  # the benchmark's own argparse: --help or a bad option
        code = exit_.code
    return EXIT_OK if code is None else int(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agnostic-sampling",
        description="Next-token sampling for NumPy and JAX: a demo, a statistical verification "
                    "and a benchmark. Exit codes: 0 ok, 1 verification failed, 2 usage error or "
                    "missing dependency.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,verify,bench}")

    demo = sub.add_parser(
        "demo", help="the seed tutorial's worked example: temperatures, truncation, draws, decoding",
        description="The seed tutorial's 9-word example: the distribution at temperatures 1, 0.1 "
                    "and 5; the words top-k 3, top-p 0.9 and min-p 0.1 keep; 10,000 draws per "
                    "strategy against the expected counts with a chi-square p-value; greedy "
                    "decoding looping where sampling does not. Runs in seconds.",
    )
    _backend_option(demo)
    demo.add_argument("--plot", metavar="FILE.png",
                      help="also write the figure: temperatures, one panel per strategy (needs matplotlib)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    demo.add_argument("--draws", type=_positive_int, default=10_000,
                      help="draws per strategy (default: 10000)")
    demo.set_defaults(run=_run_demo)

    verify = sub.add_parser(
        "verify", help="check every strategy's samples against the float64 oracle (chi-square)",
        description="Draw samples for every strategy on this machine and test them against the "
                    "float64 reference distribution (chi-square goodness of fit). Prints a table; "
                    "exit code 1 if any row fails. Needs SciPy.",
    )
    _backend_option(verify)
    verify.add_argument("--n", type=_positive_int, default=None,
                        help="draws per strategy, at least 1000 (default: the verification's own, 100000)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    verify.set_defaults(run=_run_verify)

    bench = sub.add_parser(
        "bench", add_help=False, help="time this library against the peers (options: bench --help)",
        description="Time the NumPy and JAX backends against sort-based pipelines and, where "
                    "installed, PyTorch and Hugging Face. Runs benchmarks/bench.py of a source "
                    "checkout (the benchmarks are not part of the installed package). Every option "
                    "after 'bench' is passed to it; 'bench --help' lists them.",
    )
    bench.add_argument("-h", "--help", dest="bench_help", action="store_true",
                       help="show the benchmark's options and exit")
    bench.set_defaults(run=_run_bench, parser=bench)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit code.

    With no subcommand, runs ``demo``.

    Example:
        >>> main(["demo", "--draws", "100"]) == EXIT_OK  # doctest: +ELLIPSIS
        agnostic-sampling demo (backend: numpy)
        ...
        True
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args, rest = parser.parse_known_args(argv or ["demo"])
        if rest and args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exit_:  # argparse exits 0 after --help and 2 on a usage error
        return EXIT_OK if exit_.code is None else int(exit_.code)
    try:
        if args.command == "bench":
            return _run_bench(args, rest)
        return args.run(args)
    except _UsageError as error:
        print(f"agnostic-sampling {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader went away (``demo | head``): not an error; keep Python's exit flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
