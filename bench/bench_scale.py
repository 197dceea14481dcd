"""Scale benchmark: the whole pipeline at the real SENSORIUM+ size on this machine's CPUs.

Every stage is the real command line, run as a new user would, on `synth`'s default preset (7 scans: 5
pre-training, 2 competition; 8,000 neurons, 6,000 trials, 144x256 images; history effects on):

1. ``synth`` (wall time, disk);
2. the cache build (wall time, size);
3. ``run``: a search of 2 trials at once, 1 CPU each (the baseline and the history modulator), each training
   one epoch of a few batches per scan, then validation and the final scoring (images/s, the extrapolated
   real epoch, validation and final-scoring seconds; private and shared memory of each trial in training and
   in final scoring);
4. ``export``, ``report``, ``ensemble`` over the 2 trials (peak memory), ``retrain`` of 2 seeds (a few
   batches each: the best config's own), ``submit`` of one retrained seed (time, file sizes).

Memory is read from /proc every 0.5 s over the stage's whole process tree (Ray's own processes included):
private = RssAnon (the process's own pages), shared = RssFile + RssShmem (the memory maps of the cache and Ray's
object store, one copy in the page cache for every process of the node). A trial's two phases are split at its
last report's timestamp (training and its validations before, the final scoring after).

    .venv/bin/python bench/bench_scale.py                 # about 40 minutes on 2 CPUs -> results/bench_scale.md
    .venv/bin/python bench/bench_scale.py --quick         # tiny data, a smoke run -> WORK/bench_scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from sensorium.training.rundir import RunDir  # noqa: E402

BIN = Path(sys.executable).parent
GIB = 2**30


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _status(pid: int) -> dict[str, int] | None:
    """RssAnon, RssFile, RssShmem (bytes) of one process, None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _tree(root: int) -> list[int]:
    """``root`` and every process descended from it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


@dataclass
class Stage:
    """One command's wall time and memory over its process tree."""

    name: str
    seconds: float = 0.0
    private_peak: int = 0  # the tree's summed RssAnon, at its most
    largest_private: int = 0  # the most RssAnon of one process
    shared_peak: int = 0  # the most RssFile + RssShmem of one process
    samples: dict[int, list[tuple[float, int, int]]] = field(default_factory=dict)  # pid -> (t, anon, shared)
    names: dict[int, str] = field(default_factory=dict)  # pid -> command line (first 80 characters)


def run_stage(name: str, cmd: list[str], log_file: Path) -> Stage:
    """Run ``cmd`` to its end, sampling memory every 0.5 s; raise if it fails (its log names why)."""
    log(f"{name}: {' '.join(str(c) for c in cmd)}")
    stage = Stage(name)
    start = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            now, total = time.time(), 0
            for pid in _tree(proc.pid):
                st = _status(pid)
                if st is None:
                    continue
                if pid not in stage.names:
                    try:
                        stage.names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:80].decode()
                    except OSError:
                        stage.names[pid] = "?"
                shared = st.get("RssFile", 0) + st.get("RssShmem", 0)
                stage.samples.setdefault(pid, []).append((now, st.get("RssAnon", 0), shared))
                total += st.get("RssAnon", 0)
                stage.largest_private = max(stage.largest_private, st.get("RssAnon", 0))
                stage.shared_peak = max(stage.shared_peak, shared)
            stage.private_peak = max(stage.private_peak, total)
            time.sleep(0.5)
    stage.seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_file.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"error: stage {name} failed (exit {proc.returncode}); {log_file}: {' | '.join(tail)}")
    log(f"  {stage.seconds:.0f} s, private peak {stage.private_peak / GIB:.2f} GiB")
    return stage


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def search_file(work: Path, batches: int, cache: Path) -> Path:
    """2 trials (the baseline and the history modulator) of one epoch of ``batches`` batches per scan."""
    spec = {
        "base": str(ROOT / "configs" / "sensorium_plus.yaml"),
        # one epoch, then early stopping ends the fit by itself (no epoch can beat a tolerance of 1), as it ends an
        # early-stopped trial: its final scoring runs. (A trial that reaches asha.max_t is stopped by Tune at that
        # report, before its final scoring.)
        "overrides": {"train.max_epochs": 2, "train.recipe.patience": 1, "train.recipe.lr_decay_steps": 1,
                      "train.recipe.tolerance": 1.0, "train.max_batches_per_epoch": batches, "data.cache_dir": str(cache)},
        "parameters": {"model.modulator.kind": {"type": "categorical", "choices": ["none", "history"],
                                                "role": "scientific"}},
        "search": {"num_trials": 2, "max_concurrent": 2, "cpus_per_trial": 1, "gpus_per_trial": 0,
                   "scheduler": "fifo", "seed": 0, "asha": {"grace_period": 1, "max_t": 2},
                   "start_with": [{"model.modulator.kind": "none"}, {"model.modulator.kind": "history"}]},
    }
    path = work / "search_scale.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def trial_rows(search: Stage, run_dir: Path, n_scans: int, batches: int, real_batches: int) -> list[dict[str, Any]]:
    """Per trial: throughput from its curves, and its worker's memory split at its last report."""
    rows = []
    for result in sorted(run_dir.glob("*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        epochs = [line for line in lines if line.get("epoch") == max(r.get("epoch", 0) for r in lines)]
        last, later = epochs[0], lines[lines.index(epochs[0]) + 1:]  # the last epoch's report; what came after
        folder = result.parent
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        batch = cfg["data"]["batch_size"]
        epoch = RunDir(folder).read_curves()[-1]
        train_s = epoch["train_seconds"]
        metrics = folder / "metrics.json"
        # the final scoring ends with fit: the trainable's result after it, or fit's metrics.json
        end = later[-1]["timestamp"] if later else metrics.stat().st_mtime if metrics.exists() else None
        scoring_s = end - last["timestamp"] if end is not None else float("nan")
        samples = search.samples.get(int(last["pid"]), [])
        before = [s for s in samples if s[0] <= last["timestamp"]]
        after = [s for s in samples if s[0] > last["timestamp"] and (end is None or s[0] <= end + 1)]
        rows.append({
            "trial": folder.name.split("_")[-1],
            "modulator": cfg["model"]["modulator"]["kind"],
            "images_per_s": batches * n_scans * batch / train_s,
            "real_epoch_min": real_batches * n_scans * batch / (batches * n_scans * batch / train_s) / 60,
            "validation_s": epoch["epoch_seconds"] - train_s,
            "scoring_s": scoring_s,
            "train_private": max((s[1] for s in before), default=0),
            "score_private": max((s[1] for s in after), default=0),
            "shared": max((s[2] for s in samples), default=0),
            "val_corr": epoch["val_corr"],
        })
    return rows


def render(head: list[str], stages: list[Stage], extra: dict[str, str], trials: list[dict[str, Any]]) -> str:
    lines = list(head) + ["", "## Stages", "",
                          "| stage | wall | private peak (tree) | largest process | shared peak | output |",
                          "|---|---:|---:|---:|---:|---|"]
    for s in stages:
        lines.append(f"| {s.name} | {s.seconds:.0f} s | {s.private_peak / GIB:.2f} GiB | "
                     f"{s.largest_private / GIB:.2f} GiB | {s.shared_peak / GIB:.2f} GiB | {extra.get(s.name, '')} |")
    if trials:
        lines += ["", "## The two trials (1 CPU each, at once)", "",
                  "| trial | modulator | train images/s | real epoch (extrapolated) | validation | final scoring "
                  "| private, training | private, final scoring | scoring / training | shared |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t in trials:
            ratio = t["score_private"] / t["train_private"] if t["train_private"] else float("nan")
            lines.append(
                f"| {t['trial']} | {t['modulator']} | {t['images_per_s']:.1f} | {t['real_epoch_min']:.1f} min | "
                f"{t['validation_s']:.0f} s | {t['scoring_s']:.0f} s | {t['train_private'] / GIB:.2f} GiB | "
                f"{t['score_private'] / GIB:.2f} GiB | {ratio:.2f} | {t['shared'] / GIB:.2f} GiB |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_scale", help="where everything is written")
    parser.add_argument("--out", type=Path, help="table (default results/bench_scale.md; --quick: WORK/bench_scale.md)")
    parser.add_argument("--batches", type=int, default=3, help="train batches per scan in each trial (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="synth's worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny data: a smoke run of every stage")
    parser.add_argument("--reuse-data", action="store_true",
                        help="keep the scans and caches of an earlier run in WORK and its synth and cache rows")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or (work / "bench_scale.md" if args.quick else ROOT / "results" / "bench_scale.md")
    cli = BIN / "sensorium-search"
    data, truth, cache, run_dir = work / "synth" / "data", work / "synth" / "ground_truth", work / "cache", work / "search"
    size = ["--tiny"] if args.quick else []
    head = [f"# Scale benchmark: the pipeline at the real SENSORIUM+ size on {os.cpu_count()} CPUs "
            f"({time.strftime('%Y-%m-%d')}{', quick smoke run' if args.quick else ''})", "",
            f"`python bench/bench_scale.py` (module docstring: what each stage is and how memory is read). Data: "
            f"`synth` {'--tiny' if args.quick else 'default (7 scans, 8,000 neurons, 6,000 trials, 144x256)'} with "
            f"history effects on; trials of {args.batches} batches per scan."]
    stages: list[Stage] = []
    extra: dict[str, str] = {}
    trials: list[dict[str, Any]] = []

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(head, stages, extra, trials))

    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    recorded = work / "stages.json"  # the data stages' rows, for --reuse-data
    if args.reuse_data:
        if not recorded.exists():
            raise SystemExit(f"error: --reuse-data: {recorded} is missing (no earlier run made its data here)")
        for row in json.loads(recorded.read_text()):
            stages.append(Stage(row["name"], row["seconds"], row["private_peak"], row["largest_private"],
                                row["shared_peak"]))
            extra[row["name"]] = row["extra"]
    else:
        stages.append(run_stage("synth", [cli, "synth", work / "synth", *size, "--adaptation", "0.5", "--drift",
                                          "0.4", "--arousal", "0.4", "--workers", args.workers, "--force", "--quiet"],
                                logs / "synth.log"))
        extra["synth"] = f"{size_of(data) / 1e9:.2f} GB scans + {size_of(truth) / 1e9:.2f} GB ground truth"
        load = ("from sensorium.config import DataConfig; from sensorium.data import load_data; "
                f"load_data(DataConfig(scans=({str(data)!r},), cache_dir={str(cache)!r}))")
        stages.append(run_stage("cache build", [sys.executable, "-c", load], logs / "cache.log"))
        extra["cache build"] = f"{size_of(cache) / 1e9:.2f} GB"
        recorded.write_text(json.dumps([{"name": st.name, "seconds": st.seconds, "private_peak": st.private_peak,
                                         "largest_private": st.largest_private, "shared_peak": st.shared_peak,
                                         "extra": extra[st.name]} for st in stages]))
    write()
    if run_dir.exists():  # a search folder of an earlier run: run refuses to write into it
        shutil.rmtree(run_dir)
    shutil.rmtree(work / "submission", ignore_errors=True)
    spec = search_file(work, args.batches, cache)
    stages.append(run_stage("run (2 trials at once)", [cli, "run", spec, "--data", data, "--out", run_dir],
                            logs / "run.log"))
    n_scans = len(list(data.iterdir()))
    from sensorium.data import load_data  # the scans' train batches of one real epoch (LongCycler)
    from sensorium.config import DataConfig
    loaded = load_data(DataConfig(scans=(str(data),), cache_dir=str(cache)), progress=False)
    real_batches = max(-(-int((d.tiers == "train").sum()) // 128) for d in loaded.values())
    trials = trial_rows(stages[-1], run_dir, n_scans, args.batches, real_batches)
    write()
    stages.append(run_stage("export", [cli, "export", run_dir], logs / "export.log"))
    stages.append(run_stage("report", [cli, "report", run_dir], logs / "report.log"))
    stages.append(run_stage("ensemble (2 trials)", [cli, "ensemble", run_dir, "--ground-truth", truth],
                            logs / "ensemble.log"))
    extra["ensemble (2 trials)"] = f"prediction cache {size_of(run_dir / 'ensemble' / 'cache') / 1e9:.2f} GB"
    write()
    stages.append(run_stage("retrain (2 seeds at once)", [cli, "retrain", run_dir, "--seeds", 2, "--cpus-per-seed", 1,
                                                          "--ground-truth", truth], logs / "retrain.log"))
    seed = next(p.parent.parent for p in sorted((run_dir / "retrain").rglob("checkpoints/best.pt")))
    stages.append(run_stage("submit (one seed)", [cli, "submit", seed, "--out", work / "submission"],
                            logs / "submit.log"))
    csvs = sorted((work / "submission").rglob("*.csv"))
    extra["submit (one seed)"] = f"{len(csvs)} CSVs, {sum(f.stat().st_size for f in csvs) / 1e6:.0f} MB"
    write()
    print(out.read_text())
    log(f"done -> {out}")


if __name__ == "__main__":
    main()
