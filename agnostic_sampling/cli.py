"""The command line: ``agnostic-sampling demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

import agnostic_sampling as smp

WORDS = ["closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you"]
LOGITS = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], np.float32)


def _bars(p: np.ndarray, width: int = 40) -> str:
    return "\n".join(f"  {w:>8} {q:6.3f} {'#' * round(q * width)}" for w, q in zip(WORDS, p))


def demo(args: argparse.Namespace) -> int:
    for t in (1.0, 0.1, 5.0):
        print(f"temperature {t}:\n{_bars(np.asarray(smp.probs(LOGITS, temperature=t)))}\n")
    for label, kw in (("top-k 3", {"top_k": 3}), ("top-p 0.9", {"top_p": 0.9}), ("min-p 0.1", {"min_p": 0.1})):
        print(f"{label}:\n{_bars(np.asarray(smp.probs(LOGITS, **kw)))}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agnostic-sampling", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="the seed tutorial's worked example").set_defaults(run=demo)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"])
    return args.run(args)
