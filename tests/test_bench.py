"""The benchmark runs end to end on a tiny grid and writes its table and JSON (no timings asserted)."""

from __future__ import annotations

import json

import numpy as np

from agnostic_sampling import _bench


def test_realistic_logits_have_a_body_and_spikes():
    x = _bench.realistic_logits(8, 5000, seed=1)
    assert x.dtype == np.float32 and x.shape == (8, 5000)
    top = np.sort(x, axis=-1)[:, -16:]
    assert (top[:, -1] > 15).all() and (np.median(x, axis=-1) < 0.5).all()


def test_main_writes_markdown_and_json(tmp_path, capsys):
    code = _bench.main(["--batch", "3", "--vocab", "700", "--tasks", "greedy", "top-p", "mixed rows",
                        "--impl", "agnostic_sampling numpy", "numpy sort", "--repeats", "2",
                        "--out", str(tmp_path), "--name", "tiny"])
    assert code == 0
    payload = json.loads((tmp_path / "tiny.json").read_text())
    rows = {(r["task"], r["implementation"]): r for r in payload["results"]}
    assert set(rows) == {(t, i) for t in ("greedy", "top-p", "mixed rows")
                         for i in ("floor: np.max", "agnostic_sampling numpy", "numpy sort")}
    ours = rows[("top-p", "agnostic_sampling numpy")]
    assert ours["vs_floor"] > 0 and ours["vs_best_peer"] > 0 and ours["peak_extra_bytes"] >= 0
    assert rows[("top-p", "numpy sort")]["vs_best_peer"] == 1.0  # the only peer is the best one
    table = (tmp_path / "tiny.md").read_text()
    assert "| top-p | **agnostic_sampling numpy** |" in table and "Command:" in table
    assert "batch 3 x vocabulary 700" in capsys.readouterr().out
