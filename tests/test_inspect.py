"""``sensorium-search inspect``: the summary table and figures of the tiny synthetic scans."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from sensorium.cli import main
from sensorium.data.inspect import FIGURES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_inspect_writes_table_and_figures(tiny_data, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["inspect", str(tiny_data.data_dir), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    printed = capsys.readouterr().out
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    with open(out / "summary.csv", newline="") as f:
        rows = {row["scan"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(tiny_data.keys)
    for key, path in zip(tiny_data.keys, tiny_data.scan_paths):
        row = rows[key]
        tiers = np.load(path / "meta" / "trials" / "tiers.npy")
        images = np.load(path / "meta" / "trials" / "frame_image_id.npy")
        assert int(row["neurons"]) == len(np.load(path / "meta" / "neurons" / "unit_ids.npy"))
        assert int(row["trials"]) == len(tiers)
        for tier in ("train", "validation", "test", "final_test"):
            assert int(row[tier]) == int((tiers == tier).sum()), (key, tier)
        repeats = np.unique(images[tiers == "test"], return_counts=True)[1]
        assert row["test_repeats"] in (str(repeats.min()), f"{repeats.min()}-{repeats.max()}")
        assert row["role"] == ("competition" if key in tiny_data.competition_keys else "pre-training")
        behavior = np.stack([np.load(path / "data" / "behavior" / f"{i}.npy") for i in range(len(tiers))])
        assert float(row["running_mean"]) == pytest.approx(behavior[:, 2].astype(np.float64).mean(), abs=1e-4)
        assert f"| {key} |" in printed
    assert (out / "summary.md").read_text().startswith("| |")


def test_inspect_defaults_to_an_inspect_folder_next_to_the_data(tiny_data, tmp_path):
    scan = tmp_path / tiny_data.scan_paths[0].name
    shutil.copytree(tiny_data.scan_paths[0], scan)
    assert main(["inspect", str(scan), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (scan / "inspect" / "summary.csv").is_file()


def test_inspect_missing_data_exits_nonzero_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    assert main(["inspect", str(missing), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
