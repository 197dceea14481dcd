"""A recorded learning-curve table of our own model: the ground for replaying searches in simulated time.

Configurations of ``configs/search_curves.yaml``'s space (the default search's, frozen for the tables; the
modulator branch included) are drawn as a scrambled Sobol sequence over the unit cube (one coordinate per
searched key, branch keys included; a branch key's coordinate is unused where its option is not chosen) and each is trained with the reference recipe for
at most ``R`` epochs (``train.max_epochs = R``: the recipe's own early stopping still ends a run, as it would
end a trial). Per epoch the table records the validation correlation, the best so far, the live-test
single-trial correlation of the best weights so far (what a trial stopped at that epoch delivers), the learning
rate and the epoch's cost. The first ``n_replicated`` configurations are also trained with 2 more seeds (seed
noise).

Costs: the recording runs in the background on a shared 2-core machine, so its wall seconds are not clean.
Each epoch's cost is its **process CPU seconds** at 1 torch thread (training, validation and checkpointing;
the table's own test evaluation excluded), which sharing a core inflates far less than wall time; every
configuration also gets an analytic FLOP count per epoch (``torch.utils.flop_counter`` on one training step of
each scan, times the batches per epoch, plus validation), and ``--collect`` fits CPU seconds to FLOPs and
reports how well they agree.

Two data sets (``--table``): ``A``, on which search defaults are chosen, and ``B`` (another seed and size), on
which they are reported. Both are small, so that 320 runs of 27 epochs fit in a few CPU-hours on this machine;
the trade-off: a validation set of about 100 trials per scan makes late-epoch differences between good
configurations comparable to the noise, which the 3-seed replicates measure.

    .venv/bin/python bench/curves.py record --table A              # resumable; safe to stop and start again
    .venv/bin/python bench/curves.py record --table A &            # a second process shares the work
    .venv/bin/python bench/curves.py collect --table A             # results/curves_A.csv.gz + _configs.csv

A recording process runs at nice 19, below Ray's trials (15): its costs are CPU seconds, which waiting does not
change. Each finished run is one JSON under runs/curves/<table>/done/ (written atomically), so a stopped recording
loses at most the runs in progress; ``collect`` assembles the table from the committed one and the runs done
since, and ``record`` skips the runs the committed table holds: a fresh checkout resumes where it ended.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.spec.space import Param, SearchSpec, load_search  # noqa: E402
from sensorium.atomic import atomic_write, write_text  # noqa: E402
from sensorium.config import set_values  # noqa: E402
from sensorium.data.synth import SynthConfig, generate  # noqa: E402
from sensorium.data.synth.config import DEMO_HISTORY  # noqa: E402

SEARCH_FILE = ROOT / "configs" / "search_curves.yaml"  # the tables' frozen space
WORK = ROOT / "runs" / "curves"
EPOCHS = 27  # R: ASHA rungs at grace 1 / 3 / 9 and reduction factor 3 fall on recorded epochs
N_CONFIGS = 256  # a power of 2: the Sobol points' balance properties hold
N_REPLICATED = 32
FLOP_BATCH = 8
SEEDS = (42, 43, 44)  # 42: the base config's seed; replicates add the others
# The model sees the images at 18x32 (the official 144x256 downscaled by 8, not 4): a mean configuration of the
# space costs 1.5 GFLOP per training image instead of 10 (FLOP counts of 64 Sobol points: median 0.5 / 3.6,
# largest 17 / 83); see the module docstring for the trade-off.
RESOLUTION = (18, 32)
# A: 1 scan x 300 neurons x 300 trials: 50 live-test (10 images x 5), 200 train, 50 validation; history effects on
# B: another seed and size, 2 scans x 150 neurons x 170 trials (96 train, 24 validation each), the same effects;
# recorded with --configs 128 --replicated 0 (its first 128 Sobol points, seed noise measured on A): the
# defaults chosen on A are reported on it, and its recording had to fit beside A's replays in one session
TABLES = {
    "A": SynthConfig(seed=11, n_scans=1, n_competition=0, n_neurons=300, n_trials=300, image_height=36,
                     image_width=64, n_test_images=10, test_repeats=5, validation_fraction=0.2,
                     signal_strength=2.0, **DEMO_HISTORY),
    "B": SynthConfig(seed=12, n_scans=2, n_competition=0, n_neurons=150, n_trials=170, image_height=36,
                     image_width=64, n_test_images=10, test_repeats=5, validation_fraction=0.2,
                     signal_strength=2.0, **DEMO_HISTORY),
}


# ---------------------------------------------------------------- the space as a unit cube

def cube_params(spec: SearchSpec) -> list[Param]:
    """One parameter per coordinate: every searched key once, in tree order (branch keys included)."""
    return list(spec.first_params().values())


def _grid(p: Param) -> list[Any]:
    """The values of a discrete parameter (int with its step, or categorical choices)."""
    if p.type == "categorical":
        return list(p.choices)
    return list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))


def from_unit(spec: SearchSpec, u: np.ndarray) -> dict[str, Any]:
    """The point of ``spec``'s space at ``u`` in [0, 1)^d (d = len(cube_params)): each coordinate mapped to
    its parameter's range (discrete: equal-width cells; loguniform: uniform in log). Keys of options the point
    does not choose are left out, as the sampler leaves them out."""
    coords = dict(zip([p.key for p in cube_params(spec)], u, strict=True))
    point: dict[str, Any] = {}

    def walk(params: tuple[Param, ...]) -> None:
        for p in params:
            x = float(coords[p.key])
            if p.type in ("categorical", "int"):
                values = _grid(p)
                point[p.key] = values[min(int(x * len(values)), len(values) - 1)]
            elif p.type == "loguniform":
                point[p.key] = float(math.exp(math.log(p.low) + x * (math.log(p.high) - math.log(p.low))))
            else:
                point[p.key] = float(p.low + x * (p.high - p.low))
            branch = p.branch(point[p.key])
            if branch is not None:
                walk(branch.params)

    walk(spec.params)
    return point


def sobol_points(spec: SearchSpec, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` points of a scrambled Sobol sequence over the space (scipy's Owen scrambling, seeded)."""
    from scipy.stats import qmc

    u = qmc.Sobol(d=len(cube_params(spec)), scramble=True, seed=seed).random(n)
    return [from_unit(spec, row) for row in u]


# ---------------------------------------------------------------- recording

@dataclass(frozen=True)
class Job:
    """One recorded run: a configuration of the table (its index in the Sobol sequence) and its seed."""

    config: int
    seed: int

    @property
    def name(self) -> str:
        return f"c{self.config:03d}_s{self.seed}"


def jobs(n_configs: int = N_CONFIGS, n_replicated: int = N_REPLICATED) -> list[Job]:
    """Every configuration with the first seed, then the replicates (so a partial table is a whole sample)."""
    first = [Job(c, SEEDS[0]) for c in range(n_configs)]
    return first + [Job(c, s) for s in SEEDS[1:] for c in range(min(n_replicated, n_configs))]


def make_data(table: str, work: Path) -> Path:
    """The table's synthetic scans, generated once (regenerated when their SynthConfig changed)."""
    synth = TABLES[table]
    root = work / table / "synth"
    oracle = root / "ground_truth" / "oracle.json"
    if oracle.is_file() and json.loads(oracle.read_text())["config"] == asdict(synth):
        return root / "data"
    return generate(root, synth, progress=False, overwrite=True).data_dir


def job_config(spec: SearchSpec, point: dict[str, Any], seed: int, data_dir: Path, cache: Path, epochs: int):
    """The experiment config of one recorded run: the point, on the CPU at 1 thread, ``epochs`` at most."""
    scans = sorted(str(p) for p in data_dir.iterdir() if p.is_dir())
    return set_values(spec.resolve(point), {
        "seed": seed, "data.scans": scans, "train.checkpoint_every_s": 0.0, **run_overrides(cache, epochs)})


def run_overrides(cache: Path, epochs: int) -> dict[str, Any]:
    """What every run of a table shares with the real searches checked against it: the cache, the epoch cap,
    the CPU at 1 thread and the table's resolution."""
    return {"data.cache_dir": str(cache), "train.max_epochs": epochs, "train.device": "cpu", "train.threads": 1,
            "data.image_height": RESOLUTION[0], "data.image_width": RESOLUTION[1]}


def epoch_flops(cfg, data) -> tuple[float, int]:
    """(FLOPs, trainable parameters) of one epoch of ``cfg`` on ``data``: one training step (forward + backward) of a full batch of
    each scan, times the batches per scan per epoch, plus one forward pass over each validation tier."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sensorium.models import build_model, scan_meta
    from sensorium.training.fit import batch_objective

    torch.manual_seed(0)
    in_shape = next(iter(data.values())).in_shape
    model = build_model(cfg.model, scan_meta(data), in_shape)
    rng = np.random.default_rng(0)
    # every scan yields as many batches as the largest one (shorter scans start over): its train images
    images = max(len(scan.tier_indices("train")) for scan in data.values())
    total = 0.0
    for key, scan in data.items():  # counted on a batch of 8: FLOPs grow in proportion to the batch
        batch = next(scan.batches(("train",), FLOP_BATCH, rng, torch.device("cpu"), history=model.history_length))
        with FlopCounterMode(display=False) as counter:
            batch_objective(model, key, batch, scan.scan.n_trials, True).backward()
        train = counter.get_total_flops() / len(batch) * images
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batch, key)
        model.train()
        total += train + counter.get_total_flops() / len(batch) * len(scan.tier_indices("validation"))
    return float(total), sum(p.numel() for p in model.parameters() if p.requires_grad)


def run_job(job: Job, point: dict[str, Any], spec: SearchSpec, data, data_dir: Path, work: Path,
            epochs: int) -> dict[str, Any]:
    """Train one run and return its record: the point, FLOPs per epoch and one row per epoch."""
    import torch

    from sensorium.metrics import pooled_single_trial_correlation
    from sensorium.predict import predict
    from sensorium.training.checkpoint import load_model
    from sensorium.training.fit import fit

    cfg = job_config(spec, point, job.seed, data_dir, work / "cache", epochs)
    flops, n_parameters = epoch_flops(cfg, data)
    run_dir = work / "running" / job.name
    shutil.rmtree(run_dir, ignore_errors=True)
    cpu = torch.device("cpu")
    rows: list[dict[str, Any]] = []
    state = {"best_epoch": -1, "test": math.nan, "clock": time.process_time(), "wall": time.perf_counter()}

    def test_corr() -> float:
        model, _ = load_model(run_dir / "checkpoints" / "best.pt", cpu)
        preds = [predict(model, scan, "test", cpu) for scan in data.values()]
        return pooled_single_trial_correlation([p.values for p in preds], [p.responses for p in preds])

    def report(epoch: int, m: dict[str, float], _ckpt: Path | None) -> None:
        cpu_s, wall_s = time.process_time() - state["clock"], time.perf_counter() - state["wall"]
        if m["best_epoch"] != state["best_epoch"]:
            state["best_epoch"] = m["best_epoch"]
            state["test"] = test_corr()
        rows.append({"epoch": epoch, "val_corr": m["val_corr"], "best_val_corr": m["best_val_corr"],
                     "best_epoch": m["best_epoch"], "test_corr": state["test"], "lr": m["lr"],
                     "cpu_s": round(cpu_s, 4), "wall_s": round(wall_s, 4), "train_s": round(m["train_seconds"], 4)})
        state["clock"], state["wall"] = time.process_time(), time.perf_counter()

    failure = None
    try:
        fit(cfg, run_dir, data=data, report=report, progress=False)
    except FloatingPointError as err:  # a diverged configuration is a result of the table, not a crash
        failure = str(err)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"config": job.config, "seed": job.seed, "point": point, "flops_per_epoch": flops,
            "n_parameters": n_parameters, "failure": failure, "epochs": rows}


def _claim(path: Path) -> bool:
    """Take ``path`` for this process (its pid written into it); False if a live process holds it. A claim
    whose process has died is taken over: any number of recording processes may join or stop at any time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(path.read_text() or 0), 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)  # its process died: take it over
            return _claim(path)
        except PermissionError:
            return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def record(table: str, work: Path, epochs: int, n_configs: int, n_replicated: int, limit: int | None = None) -> None:
    """Run every job of ``table`` not yet done nor claimed by another process, each written when it ends."""
    from sensorium.data import load_data

    os.nice(19 - os.nice(0))  # the lowest priority: any other work, real searches' trials (Ray: 15) included, goes first
    work = work / table
    done_dir = work / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    data_dir = make_data(table, WORK if work.parent == WORK else work.parent)
    spec = load_search(SEARCH_FILE)
    points = sobol_points(spec, n_configs)
    committed = committed_records(table, ROOT / "results")  # a new checkout resumes from the committed table
    todo = [j for j in jobs(n_configs, n_replicated)
            if (j.config, j.seed) not in committed and not (done_dir / f"{j.name}.json").is_file()]
    if limit is not None:
        todo = todo[:limit]
    data = load_data(job_config(spec, points[0], SEEDS[0], data_dir, work / "cache", epochs).data, progress=False)
    print(f"{table}: {len(todo)} runs to do", file=sys.stderr, flush=True)
    for i, job in enumerate(todo, 1):
        if (done_dir / f"{job.name}.json").is_file() or not _claim(work / "claims" / job.name):
            continue  # another recording process has it
        start = time.perf_counter()
        rec = run_job(job, points[job.config], spec, data, data_dir, work, epochs)
        write_text(done_dir / f"{job.name}.json", json.dumps(rec))
        (work / "claims" / job.name).unlink(missing_ok=True)
        last = rec["epochs"][-1] if rec["epochs"] else {}
        print(f"[{i}/{len(todo)}] {job.name}: {len(rec['epochs'])} epochs, best val "
              f"{last.get('best_val_corr', math.nan):.4f}, test {last.get('test_corr', math.nan):.4f}, "
              f"{sum(r['cpu_s'] for r in rec['epochs']):.0f} cpu-s, {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)


# Checkpoint writes in each epoch's CPU seconds. The table trains with train.checkpoint_every_s=0 (best.pt must hold
# every epoch's best weights for the test column), so every epoch writes last.pt (weights, best weights, Adam's two
# moments: 4 copies) and, when it improved, best.pt; a search writes them once a minute. Measured on this machine
# (`bench/curves.py checkpoint-cost`, 1 thread, median of 5): 1.6 ms at 50k parameters, 4.9 at 270k, 14.6 at 1M,
# 65 at 3M: about 0.5 ms + 21 ms per million parameters; in table A's first 55 runs, a median 0.4% of an epoch's
# CPU seconds, at most 4.8%. The replay subtracts it (``checkpoint_cpu_s``) to charge each epoch what a search would pay.
CHECKPOINT_BASE_S = 0.0005
CHECKPOINT_S_PER_PARAMETER = 21e-9


def checkpoint_cpu_s(n_parameters: int) -> float:
    """Estimated CPU seconds of one epoch's checkpoint writes (last.pt + best.pt) for a model of that size."""
    return CHECKPOINT_BASE_S + CHECKPOINT_S_PER_PARAMETER * n_parameters


def measure_checkpoint_cost(sizes: tuple[int, ...] = (50_000, 270_000, 1_000_000, 3_000_000)) -> list[tuple[int, float]]:
    """(parameters, median CPU seconds over 5 tries) of writing a last.pt-like payload (4 copies of the weights) and
    a best.pt (1 copy) with fit's own writer, for each size: what ``checkpoint_cpu_s`` approximates."""
    import tempfile

    import torch

    from sensorium.training.checkpoint import save_atomic

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            weights = {"w": torch.randn(n)}
            last = {"model": weights, "best_model": {"w": weights["w"].clone()},
                    "optimizer": {"exp_avg": torch.randn(n), "exp_avg_sq": torch.rand(n)}}
            times = []
            for _ in range(5):
                start = time.process_time()
                save_atomic(last, Path(tmp) / "last.pt")
                save_atomic({"model": weights}, Path(tmp) / "best.pt")
                times.append(time.process_time() - start)
            out.append((n, float(np.median(times))))
    return out


FIELDS = ["config", "seed", "epoch", "val_corr", "best_val_corr", "best_epoch", "test_corr", "lr", "cpu_s", "wall_s",
          "train_s"]


def committed_records(table: str, results: Path) -> dict[tuple[int, int], dict[str, Any]]:
    """The runs the committed table results/curves_<table>.csv.gz holds, as records like the done/ JSONs
    (run folders are not kept between machines: a new checkout resumes from the committed table)."""
    curves, configs = results / f"curves_{table}.csv.gz", results / f"curves_{table}_configs.csv"
    if not (curves.is_file() and configs.is_file()):
        return {}
    with open(configs, newline="") as f:
        meta = {int(row["config"]): row for row in csv.DictReader(f)}
    records: dict[tuple[int, int], dict[str, Any]] = {}
    with gzip.open(curves, "rt", newline="") as f:
        for row in csv.DictReader(f):
            key = (int(row["config"]), int(row["seed"]))
            if key not in records:
                m = meta[key[0]]
                records[key] = {"config": key[0], "seed": key[1], "point": json.loads(m["point"]),
                                "flops_per_epoch": float(m["gflops_per_epoch"]) * 1e9,
                                "n_parameters": int(m["n_parameters"]), "failure": m["failure"] or None, "epochs": []}
            records[key]["epochs"].append({k: _number(v) for k, v in row.items() if k not in ("config", "seed")})
    return records


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def collect(table: str, work: Path, results: Path) -> tuple[Path, Path]:
    """Write the runs done so far (the committed table's and those under work/<table>/done) as
    results/curves_<table>.csv.gz (one row per run and epoch) and results/curves_<table>_configs.csv (one row per
    configuration: its point, FLOPs per epoch, parameters); both written atomically."""
    by_key = committed_records(table, results)
    for path in sorted((work / table / "done").glob("c*_s*.json")):
        rec = json.loads(path.read_text())
        by_key[(rec["config"], rec["seed"])] = rec
    if not by_key:
        raise SystemExit(f"{work / table / 'done'}: no recorded runs yet (run: bench/curves.py record --table {table})")
    records = [by_key[k] for k in sorted(by_key)]
    curves = results / f"curves_{table}.csv.gz"
    with atomic_write(curves, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped, \
            io.TextIOWrapper(zipped, encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for rec in records:
            for row in rec["epochs"]:
                w.writerow({"config": rec["config"], "seed": rec["seed"], **{
                    k: (f"{v:.5g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in row.items()}})
    configs = results / f"curves_{table}_configs.csv"
    seen: dict[int, dict[str, Any]] = {}
    for rec in records:
        seen.setdefault(rec["config"], rec)
    with atomic_write(configs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["config", "gflops_per_epoch", "n_parameters", "failure", "point"])
        w.writeheader()
        for c, rec in sorted(seen.items()):
            w.writerow({"config": c, "gflops_per_epoch": f"{rec['flops_per_epoch'] / 1e9:.4g}",
                        "n_parameters": rec["n_parameters"], "failure": rec["failure"] or "",
                        "point": json.dumps(rec["point"], sort_keys=True)})
    cpu = np.array([np.mean([r["cpu_s"] for r in rec["epochs"][1:]] or [math.nan]) for rec in records])
    flops = np.array([rec["flops_per_epoch"] for rec in records])
    ok = np.isfinite(cpu)
    fit = "too few distinct configurations for a fit of cost on FLOPs"
    if len(set(flops[ok])) >= 3 and np.ptp(cpu[ok]) > 0:
        slope, intercept = np.polyfit(flops[ok] / 1e9, cpu[ok], 1)
        pred = slope * flops[ok] / 1e9 + intercept
        r2 = 1 - np.sum((cpu[ok] - pred) ** 2) / np.sum((cpu[ok] - cpu[ok].mean()) ** 2)
        fit = f"CPU seconds per epoch = {slope * 1000:.2f} ms/GFLOP x GFLOPs + {intercept:.2f} s (R^2 {r2:.3f})"
    median = f"{np.median(cpu[ok]):.2f} s" if ok.any() else "none timed"
    print(f"{len(records)} runs of {len(seen)} configurations -> {curves}, {configs}\n{fit}; median epoch {median}",
          file=sys.stderr)
    return curves, configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="train the table's runs not yet done (resumable)")
    rec.add_argument("--table", choices=sorted(TABLES), default="A")
    rec.add_argument("--epochs", type=int, default=EPOCHS)
    rec.add_argument("--configs", type=int, default=N_CONFIGS)
    rec.add_argument("--replicated", type=int, default=N_REPLICATED)
    rec.add_argument("--limit", type=int, default=None, help="at most this many runs, then stop")
    rec.add_argument("--work", type=Path, default=WORK)
    col = sub.add_parser("collect", help="write the runs done so far as the table under results/")
    col.add_argument("--table", choices=sorted(TABLES), default="A")
    col.add_argument("--work", type=Path, default=WORK)
    col.add_argument("--results", type=Path, default=ROOT / "results")
    sub.add_parser("checkpoint-cost", help="measure the CPU seconds of an epoch's checkpoint writes by model size")
    args = ap.parse_args(argv)
    if args.command == "checkpoint-cost":
        for n, seconds in measure_checkpoint_cost():
            print(f"{n:>9,d} parameters: {seconds * 1000:6.1f} ms CPU (model: {checkpoint_cpu_s(n) * 1000:6.1f} ms)")
    if args.command == "collect":
        collect(args.table, args.work, args.results)
    if args.command == "record":
        record(args.table, args.work, args.epochs, args.configs, args.replicated, args.limit)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
