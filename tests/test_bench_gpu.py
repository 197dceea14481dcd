"""bench/bench_gpu.py end to end on the CPU (--device cpu --quick): the real fit rows, packed trials in their
own processes, and the table, on tiny synthetic data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_bench_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "bench_gpu.md"
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--device", "cpu", "--quick",
                    "--work", str(tmp_path / "work"), "--out", str(out)], check=True, capture_output=True,
                   text=True, timeout=600)
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| baseline fp32 |")
            or line.startswith("| history modulator |")]
    assert len(rows) == 2 and not any("Error" in row for row in rows), table
    packed = [line for line in table.splitlines() if line.startswith("| 2 |")]
    assert packed and "| 2/2 |" in packed[0] and packed[0].rstrip().endswith("| none |"), table
