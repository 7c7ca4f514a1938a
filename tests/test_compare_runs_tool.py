"""tools/compare_runs.py: curves of several runs from their metrics.jsonl, and its errors."""

from __future__ import annotations

import json

from tests.integration_utils import run_tool


def write_run(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_draws_runs_against_a_baseline_and_names_a_run_without_evals(tmp_path):
    rows = [{"agent_step": 100 * i, "wall_seconds": i, "overview/episode_return": i, "eval/mean_return": 2 * i} for i in range(5)]
    write_run(tmp_path / "a", rows)
    write_run(tmp_path / "b", [{**r, "eval/mean_return": None} for r in rows])
    out = tmp_path / "fig.png"
    ok = run_tool("compare_runs.py", str(tmp_path / "a"), "--baseline", "1.5", "--x", "wall", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_tool("compare_runs.py", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "x.png"))
    assert bad.returncode != 0 and "has no eval returns" in bad.stderr
    labels = run_tool("compare_runs.py", str(tmp_path / "a"), "--label", "x", "--label", "y", "--out", str(out))
    assert labels.returncode != 0 and "--label given 2 times for 1 runs" in labels.stderr
