"""GPU benchmark: how many trials per card, and at what throughput each, for the default space at real size.

The real ``fit`` on 7 synthetic scans of the real SENSORIUM+ size (8,000 neurons, 6,000 trials: 4,500-ish
train, 500 validation, 1,000 live test, and 1,000 final test in the 2 competition scans; history effects on),
a few batches per scan and epoch, 2 epochs (the first warms cuDNN's autotuner up; the second is timed):

1. One trial alone per row: the baseline (configs/sensorium_plus.yaml) at fp32, TF32 and bf16; the baseline
   with its responses held on the device (``data.responses_on_device``) instead of staged from host memory;
   the baseline with K=8 readout samples; the history modulator (8 trials back, a 4-d state); two corners of
   configs/search_default.yaml: the most memory by the memory model (``search.spec.gpu_share.memory_plan``, what
   ``gpus_per_trial: auto`` sizes a search by; at real size 6 depth-separable layers of 128 channels, 5x5 and
   11x11 kernels, K=8, the modulator at 8 trials, batch 128) and the most compute (the dense corner: 15x15 and 11x11 full convolutions) at TF32 and bf16. Per row: train images/s, the
   projected time of one real epoch (every train trial of the 7 scans, plus validation), the peak memory of
   training (incl. the per-epoch validation) and of the final scoring, each next to the memory model's
   prediction (``sensorium.memory``), and the validation correlation after the 2 short epochs.
2. Packing: k = 1, 4, 8, 16 baseline trials at once on one card, each its own process capped at 1/k of the
   card (``runtime.cap_gpu_memory``, as a Ray trial with gpus_per_trial 1/k caps itself), CPUs split evenly:
   per-trial and total images/s and any out-of-memory failure. (Ray itself is not used: the device machine
   has no Ray; a Ray trial is this same process with CUDA_VISIBLE_DEVICES and the same cap.)
3. The trials per card this implies for 40, 80 and 141 GB cards, from the measured peaks plus the CUDA context.

Stored images are written at the model's 36x64 (the cache then has exactly the shapes 144x256 scans give it,
and the device's minutes go to the measurements rather than to rescaling). Rows run in priority order against a
deadline (``--budget-s``); the table is rewritten after every row, so a run cut short still reports.

On the GPU machine (about 7 minutes on one H200, data generation included):
    python bench/bench_gpu.py --out results/bench_gpu.md
CPU smoke test of the same code path (tests/test_bench_gpu.py; about 1.5 minutes on 2 cores):
    .venv/bin/python bench/bench_gpu.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not (the device machine)

from sensorium.config import ExperimentConfig, DataConfig, load_config, set_value  # noqa: E402
from sensorium.data import load_data  # noqa: E402
from sensorium.data.cache import load_scan  # noqa: E402
from sensorium.data.reader import resolve_scan_paths  # noqa: E402
from sensorium.data.synth import SynthConfig, generate  # noqa: E402
from sensorium.memory import CUDA_CONTEXT_BYTES, ScanShape, estimate  # noqa: E402
from sensorium.runtime import cap_gpu_memory  # noqa: E402
from sensorium.training.fit import fit  # noqa: E402

BASELINE = ROOT / "configs" / "sensorium_plus.yaml"
CARDS_GB = (40, 80, 141)
GIB = 2**30
SEARCH = ROOT / "configs" / "search_default.yaml"
# two corners of the default space: the most compute (dense 11x11 convolutions after a 15x15 input layer), and
# the most memory by the memory model, which is what gpus_per_trial auto sizes a search by: its searched values
# come from search.spec.gpu_share.memory_plan at the data's shapes when the row runs (LARGEST stands for them)
HISTORY = {"model.modulator.kind": "history", "model.modulator.history_length": 8, "model.modulator.state_dim": 4}
DENSE = {"model.core.layers": 6, "model.core.hidden_channels": 128, "model.core.input_kern": 15,
         "model.core.hidden_kern": 11, "model.core.depth_separable": False, "model.readout.samples": 8,
         "data.batch_size": 128}
LARGEST: dict[str, Any] = {}
ROWS: list[tuple[str, dict[str, Any]]] = [  # priority order: the first rows answer the most
    ("baseline fp32", {}),
    ("baseline tf32", {"train.precision": "tf32"}),
    ("baseline bf16", {"train.precision": "bf16"}),
    ("dense corner tf32", {**DENSE, "train.precision": "tf32"}),
    ("largest point (memory)", LARGEST),
    ("history modulator", HISTORY),
    ("baseline K=8", {"model.readout.samples": 8}),
    ("baseline, responses on device", {"data.responses_on_device": True}),
    ("dense corner bf16", {**DENSE, "train.precision": "bf16"}),
]
QUICK_ROWS = ("baseline fp32", "history modulator")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def make_data(work: Path, quick: bool, workers: int) -> Path:
    """The synthetic scans (reused when their config is unchanged): real size, or tiny with ``quick``."""
    if quick:
        cfg = SynthConfig(n_scans=2, n_neurons=200, n_trials=600, n_test_images=10, image_height=36,
                          image_width=64, adaptation=0.5, drift=0.4, arousal=0.4)
    else:
        cfg = SynthConfig(image_height=36, image_width=64, adaptation=0.5, drift=0.4, arousal=0.4)
    out = work / ("synth-quick" if quick else "synth-real-size")
    oracle = out / "ground_truth" / "oracle.json"
    if not (oracle.exists() and json.loads(oracle.read_text())["config"] == dataclasses.asdict(cfg)):
        log(f"generating {cfg.n_scans} scans x {cfg.n_neurons} neurons x {cfg.n_trials} trials into {out}")
        start = time.perf_counter()
        generate(out, cfg, progress=False, overwrite=True, workers=workers)
        log(f"generated in {time.perf_counter() - start:.0f} s")
    return out / "data"


def build_caches(data_dir: Path, cache_dir: Path, workers: int) -> float:
    """Preprocess every scan into the cache, several at once; returns the seconds it took."""
    start = time.perf_counter()
    paths = resolve_scan_paths([str(data_dir)])
    cfg = DataConfig(scans=(str(data_dir),), cache_dir=str(cache_dir))
    with ProcessPoolExecutor(min(workers, len(paths))) as pool:
        list(pool.map(load_scan, paths, [cfg] * len(paths), [False] * len(paths)))
    return time.perf_counter() - start


def row_config(overrides: dict[str, Any], args: argparse.Namespace, threads: int) -> ExperimentConfig:
    cfg = load_config(BASELINE)
    settings = {"data.scans": [str(args.data_dir)], "data.cache_dir": str(args.cache_dir),
                "train.max_epochs": 2, "train.max_batches_per_epoch": args.batches, "train.device": args.device,
                "train.threads": threads, "train.checkpoint_every_s": 1e9, **overrides}
    for key, value in settings.items():
        cfg = set_value(cfg, key, value)
    return cfg


def measure(cfg: ExperimentConfig, run_dir: Path, data: Any = None) -> dict[str, Any]:
    """One fit of ``cfg``: epoch 2's train images/s, the peaks of training and final scoring, val corr."""
    device = torch.device(cfg.train.device)
    epochs: list[dict[str, float]] = []
    peaks: list[tuple[float, float]] = []

    def report(epoch: int, metrics: dict[str, float], _checkpoints: Path | None) -> None:
        epochs.append(metrics)
        if device.type == "cuda":  # the peak since the last reset: this epoch's training and validation
            peaks.append((torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)))
            torch.cuda.reset_peak_memory_stats(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = fit(cfg, run_dir, data=data, report=report, progress=False)
    seconds = time.perf_counter() - start
    final = json.loads((run_dir / "metrics.json").read_text())
    n_scans = len(result.model.data_keys)  # data.scans may name a folder holding several scans
    last = epochs[-1]
    out = {
        "images_per_s": cfg.train.max_batches_per_epoch * n_scans * cfg.data.batch_size / last["train_seconds"],
        "validation_s": last["epoch_seconds"] - last["train_seconds"],
        "val_corr": last["val_corr"], "fit_s": seconds, "eval_chunk": final.get("eval_chunk"),
        "scoring_error": final.get("scoring_error"), "n_parameters": last["n_parameters"],
    }
    if device.type == "cuda":
        out["train_peak"] = max(p[1] for p in peaks)  # reserved: what the card gives up (and the cap counts)
        out["train_allocated"] = max(p[0] for p in peaks)
        out["score_peak"] = torch.cuda.max_memory_reserved(device)
        out["score_allocated"] = torch.cuda.max_memory_allocated(device)
    del result
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def real_epoch_s(row: dict[str, Any], shapes: list[ScanShape], batch: int, train_share: float) -> float:
    """Seconds of one full epoch at real size: every scan's train batches (LongCycler: the largest scan's count,
    for every scan) at the row's images/s, plus its validation."""
    batches = max(math.ceil(s.n_trials * train_share / batch) for s in shapes)
    return batches * len(shapes) * batch / row["images_per_s"] + row["validation_s"]


def worker(spec_path: Path) -> None:
    """One packed trial (a subprocess): cap itself at its share of the card, fit, write its row as JSON."""
    spec = json.loads(spec_path.read_text())
    cfg = ExperimentConfig.from_dict(spec["config"])
    cap_gpu_memory(spec["share"], torch.device(cfg.train.device))
    try:
        row = measure(cfg, Path(spec["run_dir"]))
    except torch.OutOfMemoryError as err:
        row = {"error": f"out of memory: {str(err).splitlines()[0][:160]}"}
    except RuntimeError as err:  # a failed cuDNN call under the cap is an allocation failure too
        row = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    Path(spec["out"]).write_text(json.dumps(row))


def pack(k: int, args: argparse.Namespace, cpus: int) -> dict[str, Any]:
    """k baseline trials at once on one card, each capped at 1/k, each a process; their rows and the total."""
    folder = args.work / f"pack-{k}"
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, cpus // k)
    procs = []
    for i in range(k):
        cfg = row_config({"seed": 42 + i}, args, threads)
        spec = {"config": cfg.to_dict(), "share": 1.0 / k if k > 1 else 0.0, "run_dir": str(folder / f"trial{i}"),
                "out": str(folder / f"trial{i}.json")}
        (folder / f"spec{i}.json").write_text(json.dumps(spec))
        (folder / f"trial{i}.json").unlink(missing_ok=True)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(folder / f"spec{i}.json")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    rows = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate()
        path = folder / f"trial{i}.json"
        rows.append(json.loads(path.read_text()) if path.exists() else
                    {"error": f"exit {proc.returncode}: {(err or '').strip().splitlines()[-1:]}"})
    ok = [r for r in rows if "error" not in r]
    return {"k": k, "threads": threads, "rows": rows, "ok": len(ok),
            "per_trial": sum(r["images_per_s"] for r in ok) / len(ok) if ok else float("nan"),
            "total": sum(r["images_per_s"] for r in ok),
            "errors": sorted({r["error"] for r in rows if "error" in r})}


def gb(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def render(head: list[str], rows: list[dict[str, Any]], packs: list[dict[str, Any]], context: int,
           shapes: list[ScanShape], cuda: bool) -> str:
    lines = list(head)
    lines += ["", "## One trial alone", "",
              "Peaks in GiB: measured is torch's reserved memory (what the card gives up; the context is apart), "
              "predicted is the memory model's (`sensorium.memory`, without the context). Training: the peak of "
              "the timed epoch with its validation; final scoring: the peak after it, in chunks of `chunk` trials.",
              "",
              "| row | parameters | train images/s | real epoch (min) | train peak (allocated) | predicted "
              "| final scoring peak (allocated) | predicted | chunk | val corr after 2 short epochs |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | - | {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['n_parameters']:,} | {r['images_per_s']:.0f} | {r['real_epoch_s'] / 60:.2f} | "
            f"{gb(r.get('train_peak'))} ({gb(r.get('train_allocated'))}) | {gb(r['predicted_train'])} | "
            f"{gb(r.get('score_peak'))} ({gb(r.get('score_allocated'))}) | "
            f"{gb(r['predicted_score'])} | {r['eval_chunk']} | {r['val_corr']:.4f} |")
    if packs:
        lines += ["", "## Trials packed on one card", "",
                  "k trials at once, each its own process capped at 1/k of the card (the CUDA context apart), "
                  "the CPUs split evenly; baseline at the default precision.", "",
                  "| k | threads each | finished | images/s per trial | total images/s | failures |",
                  "|---:|---:|---:|---:|---:|---|"]
        for p in packs:
            lines.append(f"| {p['k']} | {p['threads']} | {p['ok']}/{p['k']} | {p['per_trial']:.0f} | "
                         f"{p['total']:.0f} | {'; '.join(p['errors']) or 'none'} |")
    if cuda and rows:
        lines += ["", "## Trials per card", "",
                  f"floor(0.95 x card / (the row's larger measured peak + the CUDA context, {context / GIB:.2f} GiB "
                  "measured here)); predicted: the same from the memory model's peaks.", "",
                  "| row | " + " | ".join(f"{c} GB measured | predicted" for c in CARDS_GB) + " |",
                  "|---|" + "---:|---:|" * len(CARDS_GB)]
        for r in rows:
            if "error" in r or "train_peak" not in r:
                continue
            need = max(r["train_peak"], r["score_peak"]) + context
            model = max(r["predicted_train"], r["predicted_score"]) + CUDA_CONTEXT_BYTES
            cells = [f"{int(0.95 * c * 1e9 // need)} | {int(0.95 * c * 1e9 // model)}" for c in CARDS_GB]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 rows, k = 2: a smoke run")
    parser.add_argument("--out", type=Path, help="table (default: results/bench_gpu.md; --quick: WORK/bench_gpu.md)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_gpu", help="data, caches and runs")
    parser.add_argument("--batches", type=int, help="batches per scan and epoch (default 12; --quick 2)")
    parser.add_argument("--pack", default=None, help="k values, comma-separated (default 1,4,8,16; --quick 2)")
    parser.add_argument("--budget-s", type=float, default=480, help="start no new row after this (default 480)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    started = time.monotonic()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device (use --device cpu for the smoke run)")
    args.batches = args.batches or (2 if args.quick else 12)
    packing = [int(k) for k in (args.pack or ("2" if args.quick else "1,4,8,16")).split(",")]
    out = args.out or (args.work / "bench_gpu.md" if args.quick else ROOT / "results" / "bench_gpu.md")
    cpus = len(os.sched_getaffinity(0))
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache_dir = args.work / "cache"

    args.data_dir = make_data(args.work, args.quick, cpus)
    cache_s = build_caches(args.data_dir, args.cache_dir, cpus)
    log(f"caches ready in {cache_s:.0f} s")
    data = load_data(row_config({}, args, cpus).data, progress=False)
    shapes = ScanShape.of(data)
    train_share = sum(int((d.tiers == "train").sum()) for d in data.values()) / sum(s.n_trials for s in shapes)
    context = 0
    if cuda:
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info()
        context = total - free - torch.cuda.memory_reserved()  # this process's context (the card is ours alone)
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    head = [f"# GPU benchmark: trials of the default space at real size ({'quick smoke run, ' if args.quick else ''}"
            f"{time.strftime('%Y-%m-%d')})", "",
            f"Device: {name}; {cpus} CPUs; torch {torch.__version__}. Data: {len(shapes)} synthetic scans of "
            f"{', '.join(str(s.n_neurons) for s in shapes[:1])} neurons x {shapes[0].n_trials} trials "
            f"({train_share:.0%} train), history effects on; caches built in {cache_s:.0f} s. Each row: the real "
            f"`fit`, 2 epochs of {args.batches} batches per scan (epoch 2 timed). `python bench/bench_gpu.py` "
            "(module docstring: what each row is)."]
    rows: list[dict[str, Any]] = []
    packs: list[dict[str, Any]] = []

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(head, rows, packs, context, shapes, cuda))

    plan = [(n, o) for n, o in ROWS if not args.quick or n in QUICK_ROWS]
    for i, (row_name, overrides) in enumerate(plan):
        if time.monotonic() - started > args.budget_s:
            log(f"deadline: skipping {row_name!r} and the rows after it")
            break
        if i == 3 or (args.quick and i == 1):  # after the baseline's three precisions: packing
            for k in packing:
                if time.monotonic() - started > args.budget_s:
                    break
                log(f"packing {k} trials")
                packs.append(pack(k, args, cpus))
                log(f"  {packs[-1]['ok']}/{k} finished, {packs[-1]['total']:.0f} images/s in all")
                write()
        if overrides is LARGEST:
            from search.spec.gpu_share import memory_plan
            from search.spec.space import load_search

            overrides = memory_plan(load_search(SEARCH), shapes).point
        cfg = row_config(overrides, args, cpus)
        log(f"row {row_name}")
        # a row with the responses on the device gets its own ScanData (the others' stay staged)
        row_data = load_data(cfg.data, progress=False) if cfg.data.responses_on_device else data
        est = estimate(cfg, shapes, "cuda" if cuda else "cpu")
        try:
            row = measure(cfg, args.work / "rows" / row_name.replace(" ", "_").replace(",", ""), row_data)
            row["real_epoch_s"] = real_epoch_s(row, shapes, cfg.data.batch_size, train_share)
        except torch.OutOfMemoryError as err:
            row = {"error": f"out of memory: {str(err).splitlines()[0][:120]}"}
        except Exception as err:  # noqa: BLE001  (one broken row must not cost the others their device time)
            traceback.print_exc()
            row = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"}
        row.update(name=row_name, predicted_train=est.train_peak - est.context,
                   predicted_score=est.score_peak - est.context)
        rows.append(row)
        log(f"  {row.get('images_per_s', float('nan')):.0f} images/s, train peak {gb(row.get('train_peak'))} GiB "
            f"(predicted {gb(row['predicted_train'])}), scoring {gb(row.get('score_peak'))} GiB "
            f"(predicted {gb(row['predicted_score'])})")
        del row_data
        write()
    write()
    print(out.read_text())
    log(f"done in {time.monotonic() - started:.0f} s -> {out}")


if __name__ == "__main__":
    main()
