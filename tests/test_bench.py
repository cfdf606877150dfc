"""The benchmark harness in benchmarks/: its timing, its logits, its peers, and bench.py end to end
on a tiny grid (no timings asserted beyond their shape: a test never depends on the machine)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import agnostic_sampling as smp

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
HAVE_JAX = importlib.util.find_spec("jax") is not None


@pytest.fixture(scope="module", autouse=True)
def _benchmarks_on_path():
    """The scripts import ``harness`` from their own folder; so do these tests."""
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def harness():
    return importlib.import_module("harness")


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("bench")


def test_the_package_does_not_ship_the_benchmarks():
    package = Path(smp.__file__).parent
    assert not (package / "_bench.py").exists()
    assert not list(package.rglob("*bench*.py"))


def test_realistic_logits_have_a_body_and_spikes(harness):
    x = harness.realistic_logits(8, 5000, seed=1)
    assert x.dtype == np.float32 and x.shape == (8, 5000)
    top = np.sort(x, axis=-1)[:, -16:]
    assert (top[:, -1] > 15).all() and (np.median(x, axis=-1) < 0.5).all()
    assert np.array_equal(x, harness.realistic_logits(8, 5000, seed=1))


def test_flat_logits_have_wide_nuclei(harness):
    x = harness.flat_logits(2, 128256)
    assert x.dtype == np.float32 and np.array_equal(x, harness.flat_logits(2, 128256))
    kept = (smp.probs(x, top_p=0.9) > 0).sum(axis=-1)
    assert ((kept > 20000) & (kept < 30000)).all()  # the benchmarks' "about 24,000 tokens"


def test_time_calls_warms_up_then_times_each_call_beside_its_pair(harness):
    calls: list[str] = []
    timing = harness.time_calls(lambda: calls.append("run"), repeat=4, warmup=2,
                                paired=lambda: calls.append("floor"))
    assert calls == ["run", "run"] + ["floor", "run"] * 4
    assert len(timing.times_ms) == len(timing.paired_ms) == 4
    assert timing.median_ms == float(np.median(timing.times_ms)) and timing.paired_median_ms > 0


def test_time_calls_times_a_call_slower_than_the_budget_once(harness):
    calls = []
    timing = harness.time_calls(lambda: calls.append(1), repeat=50, budget_s=0.0)
    # a first call slower than the budget: no second warm-up, one timed call
    assert len(timing.times_ms) == 1 and len(calls) == 2 and timing.paired_median_ms is None


def test_machine_names_what_was_measured(harness):
    info = harness.machine()
    assert info["numpy"] == np.__version__ and info["cpus"] >= 1
    assert json.loads(json.dumps(info)) == info
    assert f"numpy {np.__version__}" in harness.machine_line(info)


def test_per_row_fills_the_off_values(harness):
    temperature, top_k, top_p, min_p = harness.per_row({"top_p": np.array([0.5, 0.9])}, 2)
    assert temperature.tolist() == [1.0, 1.0] and top_k.tolist() == [0, 0]
    assert top_p.tolist() == [0.5, np.float32(0.9)] and min_p.tolist() == [0.0, 0.0]


def test_the_numpy_sort_peer_keeps_what_the_library_keeps(harness):
    x = harness.realistic_logits(4, 3000, seed=2)
    # greedy and top-k 1 are deterministic: the peer and the library agree token for token
    assert np.array_equal(harness.sort_numpy("greedy", {"temperature": 0.0}, x)(), smp.greedy(x))
    assert np.array_equal(harness.sort_numpy("top-k", {"top_k": 1}, x)(), smp.greedy(x))
    # top-p: every draw of the peer lies in the library's kept set
    kept = smp.probs(x, top_p=0.9) > 0
    for _ in range(20):
        ids = harness.sort_numpy("top-p", {"top_p": 0.9}, x)()
        assert kept[np.arange(4), ids].all()


@pytest.mark.skipif(not HAVE_JAX, reason="the JAX peers need JAX")
def test_the_jax_peers_keep_what_the_library_keeps(harness):
    import jax

    x = harness.realistic_logits(4, 3000, seed=3)

    @jax.jit  # one compile for the four peers
    def peers(key, z):
        return (harness.static_top_k(key, z, 0.8, 1.0, k=1), harness.sort_top_p(key, z, 1.0, 0.9, top_k=1),
                harness.sort_top_p(key, z, 1.0, 0.0), harness.sort_top_p(key, z, 1.0, 0.9))

    *deterministic, nucleus = (np.asarray(ids) for ids in peers(jax.random.key(0), x))
    for ids in deterministic:  # top-k 1 and top-p 0 keep the top token alone
        assert np.array_equal(ids, smp.greedy(x))
    assert (smp.probs(x, top_p=0.9) > 0)[np.arange(4), nucleus].all()


def test_doctests_of_the_harness_and_bench(harness, bench):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for module in (harness, bench):
        for test in doctest.DocTestFinder().find(module):
            if HAVE_JAX or "jax" not in test.docstring:
                runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_bench_writes_markdown_and_json(bench, tmp_path, capsys):
    code = bench.main(["--batch", "3", "--vocab", "700", "--tasks", "greedy", "top-p", "mixed rows",
                       "--impl", "agnostic_sampling numpy", "numpy sort", "--repeats", "2",
                       "--out", str(tmp_path), "--name", "tiny"])
    assert code == 0
    payload = json.loads((tmp_path / "tiny.json").read_text())
    assert payload["command"].startswith("python benchmarks/bench.py --batch 3")
    assert payload["machine"]["numpy"] == np.__version__
    rows = {(r["task"], r["implementation"]): r for r in payload["results"]}
    assert set(rows) == {(t, i) for t in ("greedy", "top-p", "mixed rows")
                         for i in ("floor: np.max", "agnostic_sampling numpy", "numpy sort")}
    ours = rows[("top-p", "agnostic_sampling numpy")]
    assert len(ours["times_ms"]) == 2 and ours["median_ms"] == float(np.median(ours["times_ms"]))
    assert ours["vs_floor"] > 0 and ours["vs_best_peer"] > 0 and ours["peak_extra_bytes"] >= 0
    assert rows[("top-p", "numpy sort")]["vs_best_peer"] == 1.0  # the only peer is the best one
    table = (tmp_path / "tiny.md").read_text()
    assert "| top-p | **agnostic_sampling numpy** |" in table and "Command:" in table
    assert "batch 3 x vocabulary 700" in capsys.readouterr().out


def test_the_stored_results_keep_their_format(bench):
    """benchmarks/results/ holds what bench.py writes: the JSON's rows are `Result` fields."""
    payload = json.loads((BENCHMARKS / "results" / "bench-quick.json").read_text())
    assert {"command", "started_utc", "machine", "logits", "results"} <= set(payload)
    fields = set(bench.Result.__dataclass_fields__)
    assert all(set(row) == fields for row in payload["results"])
    assert {row["implementation"] for row in payload["results"]} <= set(bench.IMPLEMENTATIONS)


def test_generate_loop_runs_on_a_tiny_shape(capsys):
    generate_loop = importlib.import_module("generate_loop")
    assert generate_loop.main(["--batch", "2", "--vocab", "300", "--new-tokens", "3", "--repeats", "1",
                               "--no-jax"]) == 0
    out = capsys.readouterr().out
    assert "numpy: generate_with_state" in out and "numpy: bare loop of sample" in out
