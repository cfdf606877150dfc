"""The command line and the demo: output, exit codes, the figure, the optional subcommands."""

from __future__ import annotations

import doctest
import importlib.util
import re
import struct
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest

import agnostic_sampling as smp
from agnostic_sampling import _demo as demo
from agnostic_sampling import cli
from agnostic_sampling._dispatch import get_backend

HAVE_SCIPY = importlib.util.find_spec("scipy") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _backend_available(name: str) -> bool:
    try:
        get_backend(name)
    except ImportError:
        return False
    return True


DEMO_BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("jax", id="jax", marks=pytest.mark.skipif(not _backend_available("jax"),
                                                           reason="the JAX backend is not available")),
]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def draws_table(out: str) -> dict[str, list[tuple[int, float]]]:
    """The observed and expected counts of section 3, per word: [(observed, expected), ...]."""
    table = {}
    for word in demo.WORDS:
        line = next(line for line in out.splitlines() if re.match(rf"\s+{word}\s+\d+ \(", line))
        cells = re.findall(r"(\d+) \(\s*([\d.]+|-)\)", line)
        table[word] = [(int(o), 0.0 if e == "-" else float(e)) for o, e in cells]
    return table


# ---------------------------------------------------------------------------------------- demo


@pytest.fixture(scope="module", params=DEMO_BACKENDS)
def demo_output(request: pytest.FixtureRequest) -> tuple[str, str]:
    lines: list[str] = []
    demo.run_demo(request.param, seed=0, write=lines.append)
    return request.param, "\n".join(lines)


def test_demo_shows_the_surviving_words(demo_output: tuple[str, str]) -> None:
    backend, out = demo_output
    assert f"backend: {backend}" in out
    assert "top-k 3   keeps closer, forward, toward" in out
    assert "top-p 0.9 keeps forward, toward" in out
    assert "min-p 0.1 keeps closer, forward, toward" in out


def test_demo_shows_the_temperatures(demo_output: tuple[str, str]) -> None:
    _, out = demo_output
    forward = next(line for line in out.splitlines() if re.match(r"\s*forward\s+0\.", line))
    # T = 1, T = 0.1, T = 5: the top word's probability is 0.572, then 0.991, then 0.242
    assert re.findall(r"\d\.\d{3}", forward) == ["0.572", "0.991", "0.242"]


def test_demo_draws_follow_the_expected_counts(demo_output: tuple[str, str]) -> None:
    _, out = demo_output
    table = draws_table(out)
    assert all(len(cells) == 4 for cells in table.values())
    reference = [smp.stats.reference_probs(demo.LOGITS, **params) * demo.DRAWS
                 for params in ({}, *demo.STRATEGIES.values())] if hasattr(smp, "stats") else None
    for column in range(4):
        observed = np.array([table[w][column][0] for w in demo.WORDS])
        expected = np.array([table[w][column][1] for w in demo.WORDS])
        assert observed.sum() == demo.DRAWS
        assert not observed[expected == 0].any(), "a draw outside the kept set"
        # 10,000 draws: every count within 5 standard deviations of its expectation
        assert np.all(np.abs(observed - expected) <= 5 * np.sqrt(expected + 1))
        if reference is not None:
            np.testing.assert_allclose(expected, reference[column], atol=0.051)


@pytest.mark.skipif(not HAVE_SCIPY, reason="p-values need SciPy")
def test_demo_prints_pvalues(demo_output: tuple[str, str]) -> None:
    _, out = demo_output
    from agnostic_sampling import stats

    if not hasattr(stats, "chisquare_gof"):
        assert "no p-values: this version of agnostic_sampling.stats has no chisquare_gof" in out
        return
    line = next(line for line in out.splitlines() if line.strip().startswith("p-value"))
    pvalues = [float(p) for p in line.split()[1:]]
    assert len(pvalues) == 4
    assert min(pvalues) > 1e-3  # a fixed seed: these draws follow the distribution


def test_demo_without_scipy_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy", None)  # find_spec now reports SciPy as absent
    lines: list[str] = []
    demo.run_demo("numpy", draws=500, write=lines.append)
    out = "\n".join(lines)
    assert "no p-values: SciPy is not installed" in out
    assert "p-value " not in out
    assert draws_table(out)["forward"][0][0] > 0  # the counts are still there


def test_demo_greedy_loops_and_sampling_does_not(demo_output: tuple[str, str]) -> None:
    _, out = demo_output
    lines = out.splitlines()
    verdicts = {}
    for label in ("greedy", "temperature 1", "top-p 0.9"):
        # the text is printed as a Python repr: quoted with ' or ", whichever it does not contain
        starts = (f"{label}: '", f'{label}: "')
        row = next(i for i, line in enumerate(lines) if line.strip().startswith(starts))
        verdicts[label] = lines[row + 1].strip()
    assert verdicts["greedy"] == "-> loops on 'the ' from character 0"
    assert verdicts["temperature 1"] == "-> no loop"
    assert verdicts["top-p 0.9"] == "-> no loop"


@pytest.mark.parametrize("backend", DEMO_BACKENDS)
def test_bigram_model_on_each_backend(backend: str) -> None:
    model = demo.BigramModel.from_package_text()
    ids = model.encode("the ")[None, :]
    if backend == "jax":
        import jax.numpy as jnp

        ids = jnp.asarray(ids)
    logits = np.asarray(model(ids))
    assert logits.shape == (1, 4, len(model.alphabet))
    # 'h' follows 't' most often in English text, and ' ' most often ends a word in 'e'
    assert model.decode(logits[0].argmax(-1)) == "he t"
    assert int(smp.greedy(logits[0, 0], backend=backend)) == model.encode("h")[0]


def test_find_loop() -> None:
    assert demo.find_loop("the the the the ") == (0, "the ")
    assert demo.find_loop("abcdefgh" + "xy" * 10) == (8, "xy")
    assert demo.find_loop("abcdefghij" + "xy" * 3) is None  # the repeat is too late to count
    assert demo.find_loop("foto the, inthe to e hretheer wowhonkeerak") is None


def test_doctests_of_the_cli_and_the_demo() -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for module in (demo, cli):
        for test in doctest.DocTestFinder().find(module):
            if test.name.endswith(".plot") and not HAVE_MATPLOTLIB:
                continue
            runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


# ------------------------------------------------------------------------------- the command line


def test_demo_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", "--draws", "1000", "--seed", "3")
    assert code == cli.EXIT_OK, err
    assert "1,000 draws per strategy" in out
    assert "top-p 0.9 keeps forward, toward" in out


def test_no_subcommand_runs_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0
    assert "agnostic-sampling demo (backend: numpy)" in out


@pytest.mark.parametrize("argv", [
    ["nonsense"],
    ["demo", "--backend", "torch"],
    ["demo", "--draws", "0"],
    ["demo", "--draws", "many"],
    ["demo", "--bogus"],
    ["verify", "--n", "-5"],
    ["--version-of-nothing"],
])
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == cli.EXIT_USAGE
    assert "usage: agnostic-sampling" in err
    assert "top-k 3" not in out  # nothing ran


@pytest.mark.parametrize("argv, expect", [
    (["--help"], ["demo", "verify", "bench", "Exit codes"]),
    (["demo", "--help"], ["--backend", "--plot", "--seed", "--draws"]),
    (["verify", "--help"], ["--backend", "--n", "exit code 1"]),
])
def test_help(capsys: pytest.CaptureFixture[str], argv: list[str], expect: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == cli.EXIT_OK
    for text in expect:
        assert text in out


def test_subprocess_entry_point() -> None:
    """``python -m agnostic_sampling`` works as a program: output on stdout, exit codes."""
    done = subprocess.run([sys.executable, "-m", "agnostic_sampling", "demo", "--draws", "200"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "min-p 0.1 keeps closer, forward, toward" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "agnostic_sampling", "demo", "--backend", "cupy"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "invalid choice: 'cupy'" in bad.stderr


def test_console_script_is_cli_main() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["agnostic-sampling"] == "agnostic_sampling.cli:main"


def test_missing_backend_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str) -> Any:
        raise ImportError(f"backend {name!r} needs JAX: pip install 'agnostic-sampling[jax]'")

    monkeypatch.setattr("agnostic_sampling._dispatch.get_backend", refuse)
    code, out, err = run(capsys, "demo", "--backend", "jax")
    assert code == cli.EXIT_USAGE
    assert "the jax backend is not available" in err and "agnostic-sampling[jax]" in err
    assert out == ""


# ------------------------------------------------------------------------------------------ --plot


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="--plot needs matplotlib")
def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    path = tmp_path / "demo.png"
    code, out, err = run(capsys, "demo", "--draws", "200", "--plot", str(path))
    assert code == cli.EXIT_OK, err
    assert f"wrote {path}" in out
    data = path.read_bytes()
    assert _png_size(data) == (1200, 800)

    from matplotlib.image import imread

    pixels = imread(path)[..., :3]
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    inked = np.mean(pixels.min(axis=-1) < 0.9)
    assert len(colours) > 100  # bars in several colours, anti-aliased text: not a blank canvas
    assert 0.03 < inked < 0.6
    # the temperature-0.1 bar (orange, matplotlib's C1) is drawn: a tall run of that colour
    orange = np.all(np.abs(pixels - np.array([1.0, 0.498, 0.055])) < 0.02, axis=-1)
    assert orange.sum(axis=0).max() > 200


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="--plot needs matplotlib")
def test_plot_into_a_missing_folder_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    path = tmp_path / "no" / "such" / "folder" / "demo.png"
    code, out, err = run(capsys, "demo", "--plot", str(path))
    assert code == cli.EXIT_USAGE
    assert "does not exist" in err and out == ""


def test_plot_without_matplotlib_exits_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "demo.png"
    code, out, err = run(capsys, "demo", "--plot", str(path))
    assert code == cli.EXIT_USAGE
    assert "--plot needs matplotlib: pip install 'agnostic-sampling[plot]'" in err
    assert out == "" and not path.exists()  # refused before doing any work


# ------------------------------------------------------------------------------ verify and bench


def _fake_verify(rows: list[dict[str, Any]], seen: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType("agnostic_sampling._verify")

    def run_verification(*, backend: str, progress: Any, seed: int,
                         n: int | None = None) -> list[dict[str, Any]]:
        seen.update(backend=backend, n=n, seed=seed)
        for i in range(len(rows)):
            progress(i + 1, len(rows), rows[i]["strategy"])
        return rows

    module.run_verification = run_verification  # type: ignore[attr-defined]
    module.format_table = lambda rows: "\n".join(f"{r['strategy']} {r['passed']}" for r in rows)  # type: ignore[attr-defined]
    return module


@pytest.mark.skipif(not HAVE_SCIPY, reason="verify needs SciPy")
@pytest.mark.parametrize("passed, code", [((True, True), 0), ((True, False), 1)])
def test_verify_exit_code_and_progress(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                       passed: tuple[bool, ...], code: int) -> None:
    rows = [{"strategy": f"s{i}", "passed": ok} for i, ok in enumerate(passed)]
    seen: dict[str, Any] = {}
    monkeypatch.setitem(sys.modules, "agnostic_sampling._verify", _fake_verify(rows, seen))
    got, out, err = run(capsys, "verify", "--n", "500", "--seed", "7")
    assert got == code
    assert seen == {"backend": "numpy", "n": 500, "seed": 7}
    assert "s0 True" in out
    assert "[" + "#" * 30 + "] 2/2 s1" in err  # the progress bar ends full, on stderr


@pytest.mark.skipif(not HAVE_SCIPY or importlib.util.find_spec("agnostic_sampling._verify") is None,
                    reason="verify needs SciPy and agnostic_sampling.verify")
def test_verify_for_real(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", "--n", "1000", "--seed", "1")
    assert code == cli.EXIT_OK, out + err
    for strategy in ("greedy", "temperature", "top-k", "top-p", "min-p"):
        assert re.search(rf"^{strategy}\s+numpy\s+1,000\s.*\spass$", out, re.MULTILINE), strategy
    assert "FAIL" not in out
    assert err.splitlines()[-1].startswith("[" + "#" * 30 + "]")  # the bar ends full
    code, _, err = run(capsys, "verify", "--n", "10")  # below the verification's minimum
    assert code == cli.EXIT_USAGE
    assert "at least 1000" in err


def test_verify_missing_module_exits_2(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "agnostic_sampling._verify", None)
    code, _, err = run(capsys, "verify")
    assert code == cli.EXIT_USAGE
    assert "agnostic-sampling verify:" in err


def test_verify_without_scipy_exits_2(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy", None)
    code, _, err = run(capsys, "verify")
    assert code == cli.EXIT_USAGE
    assert "verify needs SciPy: pip install 'agnostic-sampling[stats]'" in err


@pytest.mark.parametrize("returned, code", [(None, 0), (0, 0), (3, 3)])
def test_bench_forwards_its_arguments(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                      returned: int | None, code: int) -> None:
    calls: list[tuple[list[str], str]] = []
    module = types.ModuleType("bench")
    module.main = lambda argv, prog: calls.append((list(argv), prog)) or returned  # type: ignore[attr-defined]
    monkeypatch.setattr(cli, "_load_bench", lambda: module)
    assert run(capsys, "bench", "--batch", "8", "--quick")[0] == code
    assert run(capsys, "bench", "--help")[0] == code
    prog = "python -m agnostic_sampling bench"
    assert calls == [(["--batch", "8", "--quick"], prog), (["--help"], prog)]


def test_bench_runs_the_checkouts_benchmark(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    if not (cli._BENCHMARKS / "bench.py").is_file():
        pytest.skip("the package was not imported from a source checkout")
    code, out, err = run(capsys, "bench", "--batch", "2", "--vocab", "500", "--tasks", "greedy", "--impl",
                         "agnostic_sampling numpy", "--repeats", "2", "--out", str(tmp_path), "--name", "t")
    assert code == cli.EXIT_OK, err
    assert "Command: `python -m agnostic_sampling bench --batch 2" in out
    assert "| greedy | **agnostic_sampling numpy** |" in (tmp_path / "t.md").read_text()
    code, out, _ = run(capsys, "bench", "--help")
    assert code == 0 and "usage: python -m agnostic_sampling bench" in out and "--full" in out


def test_bench_outside_a_checkout(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                  tmp_path: Any) -> None:
    monkeypatch.setattr(cli, "_BENCHMARKS", tmp_path / "benchmarks")  # as in an installed wheel
    code, _, err = run(capsys, "bench")
    assert code == cli.EXIT_USAGE
    assert "bench runs the benchmarks of a source checkout" in err and "python benchmarks/bench.py" in err
    code, out, _ = run(capsys, "bench", "--help")  # the help still answers
    assert code == 0 and "usage: agnostic-sampling bench" in out
    assert "source checkout" in " ".join(out.split())
