"""The demo: the seed tutorial's worked example, reproduced, measured and extended.

The seed tutorial ends a sentence with one of nine words. This module prints what temperature
does to that distribution, which words each truncation strategy keeps, whether 10,000 draws per
strategy follow the renormalised probabilities (a chi-square test against the float64 oracle),
and how greedy decoding loops where sampling does not, with a character bigram model counted
from the opening of *Alice's Adventures in Wonderland* (shipped as package data).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import re
from collections.abc import Callable
from typing import Any

import numpy as np

import agnostic_sampling as smp
from agnostic_sampling._params import OFF

__all__ = [
    "BigramModel",
    "DRAWS",
    "LOGITS",
    "STRATEGIES",
    "TEMPERATURES",
    "WORDS",
    "bar_chart",
    "find_loop",
    "per_row_params",
    "plot",
    "run_demo",
]

WORDS = ("closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you")
LOGITS = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], np.float32)
TEMPERATURES = (1.0, 0.1, 5.0)
STRATEGIES: dict[str, dict[str, Any]] = {
    "top-k 3": {"top_k": 3},
    "top-p 0.9": {"top_p": 0.9},
    "min-p 0.1": {"min_p": 0.1},
}
DRAWS = 10_000

Write = Callable[[str], None]


def _print(text: str) -> None:
    print(text, flush=True)


def bar_chart(columns: dict[str, Any], labels: tuple[str, ...] = WORDS, width: int = 14) -> str:
    """Terminal bar charts side by side: one row per label, one column per distribution.

    Each cell is the probability and a bar of ``#`` (``width`` characters for probability 1). A
    token outside the kept set (probability exactly 0) is shown as ``-``, so that "removed" and
    "tiny" read differently.

    Example:
        >>> columns = {"before": [0.5, 0.3, 0.2], "top-k 2": [0.625, 0.375, 0.0]}
        >>> print(bar_chart(columns, ("a", "b", "c"), width=8))
             before          top-k 2
          a  0.500 ####      0.625 #####
          b  0.300 ##        0.375 ###
          c  0.200 ##            -
    """
    label_width = max(map(len, labels))
    cell_width = 6 + width + 2
    header = " " * (label_width + 4) + "".join(f"{title:<{cell_width}}" for title in columns).rstrip()
    matrix = np.asarray([np.asarray(p, np.float64) for p in columns.values()])
    lines = [header]
    for label, row in zip(labels, matrix.T, strict=True):
        cells = "".join((f"{q:5.3f} {'#' * round(q * width)}" if q > 0 else f"{'-':>5}").ljust(cell_width)
                        for q in row)
        lines.append(f"  {label:>{label_width}}  {cells}".rstrip())
    return "\n".join(lines)


def per_row_params(settings: list[dict[str, Any]], repeat: int = 1) -> dict[str, np.ndarray]:
    """Parameter arrays for a batch with one row per setting (``repeat`` rows each).

    A step a setting does not name gets its identity value (temperature 1, top-k 0, top-p 1,
    min-p 0), so one call, compiled once on JAX, serves every setting.

    Example:
        >>> per_row_params([{"temperature": 0.5}, {"top_k": 3}])["top_k"].tolist()
        [0, 3]
    """
    return {name: np.repeat(np.array([setting.get(name, OFF[name]) for setting in settings]), repeat)
            for name in ("temperature", "top_k", "top_p", "min_p")}


@functools.cache
def _distributions(backend: str) -> dict[str, np.ndarray]:
    """Each temperature's and each strategy's distribution, from one `probs` call."""
    settings = {f"T = {t:g}": {"temperature": t} for t in TEMPERATURES} | STRATEGIES
    rows = np.broadcast_to(LOGITS, (len(settings), LOGITS.size))
    p = np.asarray(smp.probs(rows, backend=backend, **per_row_params(list(settings.values()))), np.float64)
    return dict(zip(settings, p, strict=True))


def _section_temperatures(backend: str, write: Write) -> None:
    write("1. Temperature reshapes the distribution: softmax(logits / T)")
    write("   T = 1 is the model's own distribution, T = 0.1 nearly greedy, T = 5 nearly uniform\n")
    write(bar_chart({f"T = {t:g}": _distributions(backend)[f"T = {t:g}"] for t in TEMPERATURES}) + "\n")


def _section_truncation(backend: str, write: Write) -> None:
    write("2. Truncation keeps a set of words and renormalises over it (T = 1; '-' = removed)\n")
    kept = {label: _distributions(backend)[label] for label in STRATEGIES}
    write(bar_chart(kept) + "\n")
    for label, p in kept.items():
        write(f"   {label:<9} keeps {', '.join(WORDS[i] for i in np.flatnonzero(p))}")
    top_p = STRATEGIES["top-p 0.9"]["top_p"]
    base = _distributions(backend)["T = 1"]
    order = np.argsort(-base, kind="stable")
    seed_kept = order[np.cumsum(base[order]) <= top_p]  # the seed's mask removes cumsum > p
    write(f"\n   The seed tutorial's top-p mask (remove where cumsum > p) would keep only "
          f"{', '.join(WORDS[i] for i in seed_kept)}:")
    write(f"   mass {base[seed_kept].sum():.3f} < {top_p}. Top-p keeps the smallest set whose mass "
          f"reaches p, here {base[kept['top-p 0.9'] > 0].sum():.3f}.\n")


def _pvalue_reason() -> str | None:
    """Why p-values cannot be computed here, or None if they can."""
    if importlib.util.find_spec("scipy") is None:
        return "SciPy is not installed (pip install 'agnostic-sampling[stats]')"
    from agnostic_sampling import stats

    if not hasattr(stats, "chisquare_gof"):
        return "this version of agnostic_sampling.stats has no chisquare_gof"
    return None


def _section_draws(backend: str, seed: int, draws: int, write: Write) -> None:
    from agnostic_sampling import stats

    columns = {"temperature 1": {}, **STRATEGIES}
    write(f"3. {draws:,} draws per strategy: observed (expected) counts")
    write("   expected = draws x the float64 reference probabilities (agnostic_sampling.stats);")
    write("   '-' = outside the kept set, where a single draw would be a bug\n")
    write(f"   {'':>8}" + "".join(f"{label:>16}" for label in columns))
    # all strategies in one call: `draws` rows per strategy, each with its own parameters
    rows = np.broadcast_to(LOGITS, (len(columns) * draws, LOGITS.size))
    ids = np.asarray(smp.sample(seed, rows, backend=backend, **per_row_params(list(columns.values()), draws)))
    observed = [np.bincount(row, minlength=LOGITS.size) for row in ids.reshape(len(columns), draws)]
    expected = [stats.reference_probs(LOGITS, **params) for params in columns.values()]
    for i, word in enumerate(WORDS):
        cells = "".join(f"{o[i]:>6} ({e[i] * draws:>7.1f})" if e[i] > 0 else f"{o[i]:>6} (      -)"
                        for o, e in zip(observed, expected, strict=True))
        write(f"   {word:>8}{cells}")
    reason = _pvalue_reason()
    if reason is None:
        try:
            pvalues = [stats.chisquare_gof(counts, probabilities, counts=True).pvalue
                       for counts, probabilities in zip(observed, expected, strict=True)]
        except ValueError as error:  # too few draws for two cells of expected count >= 50
            reason = str(error)
    if reason is None:
        write(f"   {'p-value':>8}" + "".join(f"{p:>16.3f}" for p in pvalues))
        write("   (Pearson chi-square goodness of fit against the reference probabilities: for a correct")
        write("   sampler the p-value is uniform on [0, 1]; one near 0 says the draws are off)\n")
    else:
        write(f"   no p-values: {reason}\n")


class BigramModel:
    """A character bigram model: the logits of the next character are log bigram counts.

    Counted from a text, wrapped around at the end so that every character has a successor.
    Called as a language model, ``model(ids)`` maps ids of shape ``(B, t)`` to logits of shape
    ``(B, t, V)`` (``-inf`` for a pair never seen), on NumPy or JAX like its input.

    Example:
        >>> model = BigramModel("abab")
        >>> model.decode(model.encode("ab"))
        'ab'
        >>> model(model.encode("a")[None, :]).shape
        (1, 1, 2)
    """

    def __init__(self, text: str):
        self.alphabet = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.alphabet)}
        ids = self.encode(text)
        counts = np.zeros((len(self.alphabet),) * 2)
        np.add.at(counts, (ids, np.roll(ids, -1)), 1)
        with np.errstate(divide="ignore"):
            self.table = np.log(counts).astype(np.float32)

    @classmethod
    def from_package_text(cls) -> BigramModel:
        """The model counted from ``agnostic_sampling/data/alice.txt``, lower-cased."""
        raw = importlib.resources.files("agnostic_sampling").joinpath("data/alice.txt").read_text("utf-8")
        body = raw.split("\n\n", 1)[1]  # the first paragraph is the attribution
        return cls(re.sub(r"\s+", " ", body.lower()).strip())

    def encode(self, text: str) -> np.ndarray:
        return np.array([self._index[c] for c in text], np.int64)

    def decode(self, ids: Any) -> str:
        return "".join(self.alphabet[int(i)] for i in np.asarray(ids).reshape(-1))

    def __call__(self, ids: Any) -> Any:
        from agnostic_sampling._dispatch import is_jax_array

        if is_jax_array(ids):
            import jax.numpy as jnp

            return jnp.asarray(self.table)[ids]
        return self.table[np.asarray(ids)]


def find_loop(text: str, max_period: int = 12) -> tuple[int, str] | None:
    """Where ``text`` falls into a loop it never leaves: ``(start, cycle)``, or None.

    A loop counts only if it covers at least the second half of the text, so random text that
    happens to repeat a few characters at its end is not called a loop.

    Example:
        >>> find_loop("and the the the the the the the ")
        (3, ' the')
        >>> find_loop("and then there was none") is None
        True
    """
    for period in range(1, max_period + 1):
        start = len(text) - period
        while start > 0 and text[start - 1] == text[start - 1 + period]:
            start -= 1
        if start <= len(text) // 2 and len(text) - start >= 3 * period:
            return start, text[start:start + period]
    return None


def _decode(model: BigramModel, prompt: str, new_tokens: int, backend: str, seed: int,
            params: dict[str, Any]) -> list[str]:
    """Decode one row per entry of the per-row ``params`` arrays, all rows in one batch."""
    rows = len(next(iter(params.values())))
    ids = np.tile(model.encode(prompt), (rows, 1))
    result = smp.generate(seed, model, ids, max_new_tokens=new_tokens, backend=backend, **params)
    return [model.decode(row) for row in np.asarray(result.ids)]


def _section_generation(backend: str, seed: int, write: Write) -> None:
    model = BigramModel.from_package_text()
    prompt, new_tokens = "alice ", 60
    write(f"4. Decoding with a character bigram model ({len(model.alphabet)} characters, counted from "
          "Alice in Wonderland)")
    write(f"   prompt {prompt!r}, {new_tokens} new characters, one row per strategy, one smp.generate call\n")
    # one batch, per-row parameters: row 0 greedy (temperature 0), row 1 plain sampling, row 2 top-p
    labels = ["greedy", "temperature 1", "top-p 0.9"]
    params = {"temperature": np.array([0.0, 1.0, 1.0]), "top_p": np.array([1.0, 1.0, 0.9])}
    texts = _decode(model, prompt, new_tokens, backend, seed, params)
    for label, text in zip(labels, texts, strict=True):
        generated = text[len(prompt):]
        loop = find_loop(generated)
        verdict = f"loops on {loop[1]!r} from character {loop[0]}" if loop else "no loop"
        write(f"   {label:>13}: {generated!r}")
        write(f"   {'':>13}  -> {verdict}")
    write("")


def run_demo(backend: str = "numpy", *, seed: int = 0, draws: int = DRAWS, write: Write = _print) -> None:
    """Print the whole demo on ``backend`` (``"numpy"`` or ``"jax"``).

    Example:
        >>> lines = []
        >>> run_demo("numpy", draws=1000, write=lines.append)
        >>> any(line.endswith("keeps forward, toward") for line in lines)  # top-p 0.9
        True
    """
    write(f"agnostic-sampling demo (backend: {backend})\n")
    write("The seed tutorial's next-word example: 9 words and their logits")
    write("   " + "  ".join(f"{w} {x:+.2f}" for w, x in zip(WORDS[:5], LOGITS[:5], strict=True)))
    write("   " + "  ".join(f"{w} {x:+.2f}" for w, x in zip(WORDS[5:], LOGITS[5:], strict=True)) + "\n")
    _section_temperatures(backend, write)
    _section_truncation(backend, write)
    _section_draws(backend, seed, draws, write)
    _section_generation(backend, seed, write)


def plot(path: str, backend: str = "numpy") -> None:
    r"""Write the demo's figure to ``path`` (PNG): temperatures, then one panel per strategy.

    The top panel is the seed tutorial's grouped bar chart (probability of each word at
    temperatures 1, 0.1 and 5); below it, each truncation strategy's renormalised distribution
    over the temperature-1 distribution it started from. Needs matplotlib.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "demo.png")
        >>> plot(path)
        >>> open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
        True
    """
    from matplotlib.figure import Figure  # the pyplot-free API: no global state, no GUI backend

    fig = Figure(figsize=(12, 8), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=(1.1, 1))
    x = np.arange(len(WORDS))

    top = fig.add_subplot(grid[0, :])
    width = 0.27
    for i, temperature in enumerate(TEMPERATURES):
        top.bar(x + (i - 1) * width, _distributions(backend)[f"T = {temperature:g}"], width,
                label=f"Temperature = {temperature:g}")
    top.set_xticks(x, WORDS)
    top.set_ylabel("Probability")
    top.set_ylim(0, 1.05)
    top.set_title("Temperature scaling: softmax(logits / T)")
    top.legend()
    fig.suptitle("The seed tutorial's next-word example: 9 words, their probabilities, and what "
                 "each strategy keeps")

    base = _distributions(backend)["T = 1"]
    for column, (label, params) in enumerate(STRATEGIES.items()):
        ax = fig.add_subplot(grid[1, column])
        p = _distributions(backend)[label]
        ax.bar(x, base, 0.8, color="0.85", label="before (T = 1)")
        ax.bar(x, p, 0.5, color=f"C{column + 3}", label="kept, renormalised")
        for i in np.flatnonzero(p):
            ax.annotate(f"{p[i]:.2f}", (x[i], p[i]), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, WORDS, rotation=60, ha="right")
        for tick, q in zip(ax.get_xticklabels(), p, strict=True):
            tick.set_color("black" if q > 0 else "0.6")
        if "min_p" in params:
            threshold = params["min_p"] * base.max()
            ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1)
            ax.annotate(f"threshold {params['min_p']:g} x {base.max():.3f} = {threshold:.3f}",
                        (x[-1] + 0.4, threshold), ha="right", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
        if "top_p" in params:
            mass = base[p > 0].sum()
            ax.text(0.98, 0.97, f"kept mass before renormalising: {mass:.3f} >= {params['top_p']}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{label}: {np.count_nonzero(p)} words kept")
        if column == 0:
            ax.set_ylabel("Probability")
        ax.legend(loc="upper left", fontsize=8, bbox_to_anchor=(0, 0.92) if "top_p" in params else None)
    fig.savefig(path, dpi=100)
