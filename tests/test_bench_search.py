"""Smoke test of bench/bench_search.py: its core in quick mode on the tiny scans, with the session's Ray.

It checks the code (searches run to their compute budget, traces, table, figure), not the numbers.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "bench_search.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's names through sys.modules
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_runs_every_search_to_its_budget_and_writes_table_and_figure(ray_session, tiny_data,
                                                                                       tmp_path):
    bench = _bench_module()
    work, out = tmp_path / "work", tmp_path / "out"
    rows = bench.bench(tiny_data.data_dir, work, out, methods=bench.QUICK_METHODS, seeds=1, budget_s=3.0,
                       command="pytest quick")
    assert [r["method"] for r in rows] == list(bench.QUICK_METHODS) and rows[0]["method"] == bench.BASELINE
    assert rows[0]["reached"] == 1 and rows[0]["ratio"] == 1.0  # the baseline reaches its own final best
    traces = json.loads((work / "traces.json").read_text())
    assert [(t["method"], t["seed"]) for t in traces] == [(m, 0) for m in bench.QUICK_METHODS]
    for t in traces:
        seconds, epochs, best = zip(*t["trace"])
        assert seconds[-1] >= 3.0 and list(epochs) == list(range(1, len(epochs) + 1))
        assert list(seconds) == sorted(seconds) and list(best) == sorted(best)  # compute and best so far only grow
        assert (work / "runs" / f"{t['method']}-seed0" / "search.yaml").is_file()  # its own run folder
    text = (out / "bench_search.md").read_text()
    assert "| random+fifo |" in text and "| tpe+asha |" in text and "Command: `pytest quick`" in text
    assert "Machine:" in text
    assert (out / "bench_search.png").stat().st_size > 10_000
    # --reuse: the finished searches are read back, not run again (same traces, run folders untouched);
    # --extend-baseline 2: only random+fifo on to twice the budget runs, in a folder of its own ...
    run_dir = work / "runs" / "tpe+asha-seed0"
    stamps = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    again = bench.bench(tiny_data.data_dir, work, tmp_path / "out2", methods=bench.QUICK_METHODS, seeds=1,
                        budget_s=3.0, command="pytest quick", reuse=True, extend=2.0)
    retraced = json.loads((work / "traces.json").read_text())
    assert [t for t in retraced if t["budget_factor"] == 1] == traces and again[1]["best"] == rows[1]["best"]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == stamps
    [longer] = [t for t in retraced if t["budget_factor"] == 2]
    assert longer["method"] == bench.BASELINE and longer["trace"][-1][0] >= 6.0
    assert (work / "runs" / "random+fifo-x2-seed0" / "search.yaml").is_file()
    assert "to 2x the budget" in (tmp_path / "out2" / "bench_search.md").read_text()
    # ... and only a search of exactly the same spec counts as finished
    assert bench.finished(bench.method_spec(bench.bench_spec(tiny_data.data_dir, 3.0), "tpe+asha", 0), run_dir)
    assert not bench.finished(bench.method_spec(bench.bench_spec(tiny_data.data_dir, 2.5), "tpe+asha", 0), run_dir)
    assert not bench.finished(bench.method_spec(bench.bench_spec(tiny_data.data_dir, 3.0), "tpe+asha", 1), run_dir)
