"""First open (validate + preprocess into the cache) vs cached open of a realistic-size scan, and the memory
a second process adds when it maps the same cache.

A random scan of the official size (default 6000 trials, 7500 neurons, 144x256 images) is written in the
official file tree to a temporary folder (removed at the end). Timings:

- first open from the folder / from a zip of it, with the source evicted from the page cache first
  (``posix_fadvise(DONTNEED)`` on its files: a cold read, as on a fresh node);
- cached open (warm): what every later call, trial and process pays;
- cached open + one full read of all arrays with the cache evicted (the first trial after a reboot);
- one epoch of normalised train batches (batch 128) from the memory maps.

Memory: a child process opens the cache and touches every page while this process holds it too; its
``/proc/self/smaps_rollup`` shows the data as shared page cache, not as private memory.
Writes results/bench_cache.md.

    .venv/bin/python bench/bench_cache.py [--trials 6000] [--neurons 7500] [--no-zip]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from sensorium.config import DataConfig
from sensorium.data import ScanData, load_scan
from sensorium.data.format import ScanArrays, scan_folder_name, write_scan

OUT = Path(__file__).resolve().parent.parent / "results" / "bench_cache.md"


def write_random_scan(root: Path, n_trials: int, n_neurons: int, shape: tuple[int, int]) -> Path:
    """A random scan in the official tree (values are noise; only sizes matter here)."""
    rng = np.random.default_rng(0)
    tiers = np.array(["train"] * 8 + ["validation", "test"])[np.arange(n_trials) % 10]
    scan = ScanArrays(
        images=(rng.random((n_trials, 1, *shape), dtype=np.float32) * 255),
        responses=rng.gamma(0.5, 1.0, (n_trials, n_neurons)).astype(np.float32),
        behavior=rng.gamma(2.0, 1.0, (n_trials, 3)).astype(np.float32),
        pupil_center=rng.normal(0, 5, (n_trials, 2)).astype(np.float32),
        trials={
            "tiers": tiers,
            "frame_image_id": np.arange(n_trials),
            "frame_image_class": np.array(["imagenet"] * n_trials),
            "trial_idx": rng.permutation(n_trials),
            "frame_trial_ts": np.array(["2019-01-01 00:00:00"] * n_trials),
        },
        neurons={
            "unit_ids": np.arange(1, n_neurons + 1),
            "cell_motor_coordinates": rng.uniform(-300, 300, (n_neurons, 3)),
            **{k: np.ones(n_neurons, np.int64) for k in ("animal_ids", "sessions", "scan_idx")},
            "area": np.array(["V1"] * n_neurons),
            "layer": np.array(["L2/3"] * n_neurons),
        },
    )
    return write_scan(root / scan_folder_name("99999-9-9"), scan)


def evict(path: Path) -> None:
    """Drop the clean page-cache pages of ``path`` (a file or every file below a folder)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # just-written pages are dirty and cannot be dropped before write-back
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def touch_all(scan) -> float:
    """Read every page of the four mapped arrays (returns a checksum so the reads are not skipped)."""
    return float(sum(np.asarray(getattr(scan, g)).sum(dtype=np.float64)
                     for g in ("images", "responses", "behavior", "pupil_center")))


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def smaps_rollup() -> dict[str, float]:
    """This process's memory in MB from /proc/self/smaps_rollup (Rss, Pss, Private_*, Shared_*)."""
    values = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        values[key] = int(value.split()[0]) / 1024
    return values


def _child(source: str, cache_dir: str, queue) -> None:
    before = smaps_rollup()
    scan = load_scan(Path(source), DataConfig(cache_dir=cache_dir), progress=False)
    touch_all(scan)
    after = smaps_rollup()  # measured while ``scan`` still holds the maps
    queue.put({k: after[k] - before[k] for k in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean")})


def second_process_memory(source: Path, cache_dir: str) -> dict[str, float]:
    """Memory a second process adds by mapping and reading the whole cache (this process holds it too)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(str(source), cache_dir, queue))
    child.start()
    result = queue.get(timeout=600)
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6000)
    parser.add_argument("--neurons", type=int, default=7500)
    parser.add_argument("--no-zip", action="store_true", help="skip the first open from a zip")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the scan (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_cache-", dir=args.workdir))
    rows: list[tuple[str, str]] = []
    try:
        t_write, folder = timed(write_random_scan, work / "scans", args.trials, args.neurons, (144, 256))
        source_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
        print(f"wrote {folder.name}: {source_mb:.0f} MB in {t_write:.1f} s")
        cfg = DataConfig(cache_dir=str(work / "cache"))

        evict(folder)
        t_first, scan = timed(load_scan, folder, cfg, True)
        cache_mb = sum(p.stat().st_size for p in scan.cache_dir.iterdir()) / 2**20
        rows.append(("first open, folder (validate + downscale + write cache; source not in page cache)",
                     f"{t_first:.2f} s"))
        if not args.no_zip:
            archive = work / f"{folder.name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
                for path in sorted(folder.rglob("*")):
                    zf.write(path, Path(folder.name) / path.relative_to(folder))
            evict(archive)
            t_zip, _ = timed(load_scan, archive, DataConfig(cache_dir=str(work / "cache-zip")), True)
            rows.append(("first open, zip (stored, read member by member; not in page cache)", f"{t_zip:.2f} s"))

        cached = [timed(load_scan, folder, cfg, False)[0] for _ in range(5)]
        t_cached = statistics.median(cached)
        rows.append(("cached open (median of 5; fingerprint = one stat per source file, then mmap)",
                     f"{t_cached * 1000:.1f} ms"))
        evict(scan.cache_dir)
        t_cold = timed(lambda: touch_all(load_scan(folder, cfg, False)))[0]
        rows.append(("cached open + first full read, cache not in page cache", f"{t_cold:.2f} s"))

        data = ScanData(load_scan(folder, cfg, False), behavior_channels=True)
        rng = np.random.default_rng(0)
        t_epoch, n = timed(lambda: sum(len(b) for b in data.batches("train", 128, rng=rng)))
        rows.append((f"one epoch of normalised train batches ({n} trials, batch 128, 4x36x64)",
                     f"{t_epoch:.2f} s ({n / t_epoch:.0f} trials/s)"))

        touch_all(scan)  # this process holds every page, as a first trial would
        mem = second_process_memory(folder, cfg.cache_dir)
        private = mem["Private_Clean"] + mem["Private_Dirty"]
        rows.append(("second process mapping + reading the whole cache: added Rss / Pss / private",
                     f"{mem['Rss']:.0f} / {mem['Pss']:.0f} / {private:.0f} MB"))
        ratio = t_first / t_cached
        report(args, rows, source_mb, cache_mb, ratio)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, rows: list[tuple[str, str]], source_mb: float, cache_mb: float, ratio: float) -> None:
    width = max(len(r[0]) for r in rows)
    print()
    for what, value in rows:
        print(f"{what:<{width}}  {value}")
    print(f"\nfirst open / cached open: {ratio:,.0f}x")
    lines = [
        "# Scan cache: first open vs cached open",
        "",
        f"Random scan of official size: {args.trials} trials, {args.neurons} neurons, 144x256 images stored "
        f"({source_mb:.0f} MB of .npy files); cache at 36x64 ({cache_mb:.0f} MB). "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "`.venv/bin/python bench/bench_cache.py`",
        "",
        "| step | time / memory |",
        "|---|---|",
        *[f"| {what} | {value} |" for what, value in rows],
        "",
        f"**First open / cached open: {ratio:,.0f}x.**",
        "",
        "Pss counts shared pages divided by the number of processes mapping them: the second process's data is",
        "shared page cache (Rss grows by the data it reads, private memory does not), so concurrent trials on one",
        "node share one copy of each scan.",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
