"""Never half-write: a full disk mid-write (drill 5), a truncated last.pt on resume (drill 6), and the locks that
keep two searches (or two retrains) out of one folder.

A full disk is simulated below the writers: every file ``sensorium.atomic`` opens takes a few bytes, then
fails each write with ENOSPC, as the kernel does when the disk fills mid-file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from sensorium import cli
from sensorium.atomic import FolderInUse, WriteError, atomic_write, exclusive_lock, write_text
from sensorium.config import DataConfig, ExperimentConfig, load_config, set_value
from sensorium.data import load_data
from sensorium.data.cache import load_scan
from sensorium.submission import write_submission
from sensorium.training import fit
from sensorium.training.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"
TIMES = ("epoch_seconds", "train_seconds", "data_seconds")


class _FullDisk:
    """A file that stores ``room`` more bytes (characters in text mode), then fails every write with ENOSPC."""

    def __init__(self, f: Any, room: int) -> None:
        self._f, self._room = f, room

    def write(self, data: Any) -> int:
        if len(data) > self._room:
            self._f.write(data[: self._room])  # the part that still fitted, as a real short write
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def fill_disk(monkeypatch: pytest.MonkeyPatch, room: int = 100) -> None:
    """From now on (until monkeypatch undoes it), each file atomic_write opens fills after ``room`` bytes."""
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: _FullDisk(real(fd, *args, **kwargs), room))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _curves(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMES} for row in RunDir(run_dir).read_curves()]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_cfg(tiny_data, tmp_path_factory) -> ExperimentConfig:
    cfg = set_value(load_config(TINY), "data.scans", [str(p) for p in tiny_data.scan_paths])
    return set_value(cfg, "data.cache_dir", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tiny_scans(tiny_cfg):
    return load_data(tiny_cfg.data, progress=False)


@pytest.fixture(scope="module")
def reference(tiny_cfg, tiny_scans, tmp_path_factory):
    """An uninterrupted tiny fit: what every interrupted one must end as."""
    return fit(tiny_cfg, tmp_path_factory.mktemp("reference") / "run", data=tiny_scans, progress=False)


# ------------------------------------------------------------------------------- the one safe writer
def test_atomic_write_passes_other_errors_through_and_honours_the_umask(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(KeyError):
        with atomic_write(path) as f:
            f.write("new, half")
            raise KeyError("a bug in the writing code")
    assert path.read_text() == "old" and _snapshot(tmp_path) == {"a.txt": b"old"}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's 0600


# --------------------------------------------------------------------------- drill 5: a full disk
def test_full_disk_mid_checkpoint_keeps_the_last_good_one_and_resume_finishes_the_run(
    tiny_cfg, tiny_scans, reference, tmp_path, monkeypatch
):
    run = RunDir(tmp_path / "run")
    good: dict[str, bytes] = {}

    def disk_fills_after_epoch_1(epoch, metrics, checkpoint_dir):
        if epoch == 1:  # epoch 1's best.pt and last.pt are written: the disk fills during epoch 2's
            good.update(_snapshot(checkpoint_dir))
            fill_disk(monkeypatch, room=1000)

    with pytest.raises(WriteError) as caught:
        fit(tiny_cfg, run.root, data=tiny_scans, report=disk_fills_after_epoch_1, progress=False)
    message = str(caught.value)
    assert re.fullmatch(rf"cannot write {re.escape(str(run.checkpoints))}/(best|last)\.pt: No space left on device; "
                        "the previous version, if any, is unchanged", message)
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)  # infrastructure, by errno
    assert _snapshot(run.checkpoints) == good  # byte for byte, and no temporary file beside them

    monkeypatch.undo()  # space again: the run resumes from epoch 1 and ends as if nothing happened
    resumed = fit(tiny_cfg, run.root, data=tiny_scans, resume=run.root, progress=False)
    assert _curves(run.root) == _curves(reference.run_dir)
    assert _same_weights(resumed.model, reference.model)


def test_full_disk_while_writing_a_submission_keeps_the_previous_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    table = (np.arange(40), np.arange(40) % 7, np.arange(100, 130), rng.normal(size=(40, 30)))
    path = write_submission(tmp_path / "sub" / "submission_file_live_test.csv", *table)
    before = _snapshot(path.parent)
    fill_disk(monkeypatch, room=500)
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(path))}: No space left on device"):
        write_submission(path, *table[:3], table[3] * 2, overwrite=True)
    assert _snapshot(path.parent) == before


def test_full_disk_while_exporting_best_config_keeps_the_previous_file(tmp_path, monkeypatch):
    import search.store.results
    from search.products.export import export_best, read_best_config
    from search.store.results import TrialRecord
    from search.spec.space import parse_search

    raw = yaml.safe_load((REPO / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str(REPO / "configs" / raw["base"])
    spec = parse_search(raw)
    params = {"train.lr": 0.01, "model.core.hidden_channels": 8, "model.readout.gauss_type": "full"}
    trial = TrialRecord("t1", "done", params, best_val_corr=0.3, best_epoch=2, epochs=4, path=tmp_path / "trial_t1")
    monkeypatch.setattr(search.store.results, "load_run", lambda run_dir: (Path(run_dir), spec, [trial]))

    path = export_best(tmp_path)
    before = _snapshot(tmp_path)
    fill_disk(monkeypatch, room=200)
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(path))}: No space left on device"):
        export_best(tmp_path)
    assert _snapshot(tmp_path) == before
    assert read_best_config(path)[1]["trial_id"] == "t1"


def test_full_disk_in_the_train_command_exits_2_with_one_line(tiny_data, tiny_cfg, tiny_scans, tmp_path, monkeypatch,
                                                              capsys):
    out = tmp_path / "cli-run"
    fill_disk(monkeypatch, room=0)
    code = cli.main(["train", str(TINY), "--data", *map(str, tiny_data.scan_paths), "--out", str(out), "--quiet",
                     "--set", f"data.cache_dir={tiny_cfg.data.cache_dir}"])  # tiny_scans built the cache: only maps
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: cannot write {out / 'config.yaml'}: No space left on device; " \
                  "the previous version, if any, is unchanged\n"


def test_full_disk_while_building_the_cache_leaves_no_half_cache(make_scan, tmp_path, monkeypatch):
    scan = make_scan(n_trials=30)
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    real = np.save

    def save_then_fill(file, array, *args, **kwargs):  # the big arrays are written; the disk fills after
        real(file, array, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", save_then_fill)
    with pytest.raises(WriteError, match=rf"^cannot write {re.escape(str(tmp_path / 'cache'))}/1-2-3-[0-9a-f]{{16}}: "
                                         "No space left on device"):
        load_scan(scan, cfg, progress=False)
    [left] = [p.name for p in (tmp_path / "cache").iterdir()]  # no temporary folder, no cache entry
    assert re.fullmatch(r"\.1-2-3-[0-9a-f]{16}\.lock", left)
    monkeypatch.undo()
    assert load_scan(scan, cfg, progress=False).n_trials == 30


# ------------------------------------------------------------------ drill 6: a truncated last.pt
def test_truncated_last_pt_on_resume_warns_and_starts_again_to_the_same_result(tiny_cfg, tiny_scans, reference,
                                                                                tmp_path):
    run = RunDir(tmp_path / "run")

    def killed_after_epoch_2(epoch, metrics, checkpoint_dir):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(tiny_cfg, run.root, data=tiny_scans, report=killed_after_epoch_2, progress=False)
    whole = run.last.read_bytes()
    run.last.write_bytes(whole[: len(whole) // 2])

    with pytest.warns(UserWarning) as warned:
        resumed = fit(tiny_cfg, run.root, data=tiny_scans, resume=run.root, progress=False)
    [warning] = [str(w.message) for w in warned if str(run.last) in str(w.message)]
    assert re.fullmatch(rf"{re.escape(str(run.last))}: not a readable checkpoint \(\w+: [^\n]+\); "
                        "starting the run again from epoch 0", warning)
    assert "resumed" not in json.loads(run.provenance.read_text())  # a fresh start, not a continuation
    assert _curves(run.root) == _curves(reference.run_dir)
    assert _same_weights(resumed.model, reference.model)


def test_train_resume_with_a_damaged_last_pt_starts_again(tiny_data, tiny_cfg, tmp_path):
    out = tmp_path / "cli-run"
    args = ["train", str(TINY), "--data", *map(str, tiny_data.scan_paths), "--out", str(out), "--quiet",
            "--set", f"data.cache_dir={tiny_cfg.data.cache_dir}", "--set", "train.max_epochs=1"]
    assert cli.main(args) == 0
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.warns(UserWarning, match=re.escape(str(last))):
        assert cli.main([*args, "--resume"]) == 0
    assert torch.load(last, weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------------------------- locks
HOLD = """import sys, time
from sensorium.atomic import exclusive_lock
with exclusive_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(lock_file: Path, what: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file), what], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_search_or_retrain_in_a_locked_folder_is_refused_until_the_holder_dies(tmp_path):
    from search.raytune.driver import SEARCH_LOCK, resume_search, run_search
    from search.products.retrain import RETRAIN_LOCK, retrain
    from search.spec.space import parse_search, with_data

    raw = yaml.safe_load((REPO / "configs" / "search_tiny.yaml").read_text())
    raw["base"] = str(REPO / "configs" / raw["base"])
    spec = with_data(parse_search(raw), [str(tmp_path / "scans")])
    run_dir = tmp_path / "search"
    write_text(run_dir / "search.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    out = tmp_path / "retrain"

    searcher, retrainer = _holder(run_dir / SEARCH_LOCK, "search"), _holder(out / RETRAIN_LOCK, "retrain")
    try:
        for attempt, folder, what, holder in (
            (lambda: run_search(spec, run_dir, progress=False), run_dir, "search", searcher),
            (lambda: resume_search(run_dir, progress=False), run_dir, "search", searcher),
            (lambda: retrain(TINY, out=out, progress=False), out, "retrain", retrainer),
        ):
            with pytest.raises(FolderInUse) as refused:  # before Ray starts or anything is written
                attempt()
            expected = f"{folder.resolve()} is in use by another {what} (pid {holder.pid} on "
            assert str(refused.value).startswith(expected)
            assert "\n" not in str(refused.value)
    finally:
        for proc in (searcher, retrainer):
            proc.send_signal(signal.SIGKILL)  # a killed driver: no clean-up of its own runs
            proc.wait()
    with exclusive_lock(run_dir / SEARCH_LOCK, "search"), exclusive_lock(out / RETRAIN_LOCK, "retrain"):
        pass  # the kernel released both with their holders
