"""``sensorium-search inspect DATA... [--out DIR]``: the dataset tutorial as a command.

For every scan found under DATA (scan folders, official zips, or directories of them) it reports neurons,
trials per tier, repeats per test image, response sparsity and behaviour statistics, as a table printed
to stdout and written to ``summary.md`` and ``summary.csv``, and draws four PNG figures: example stimuli,
response distributions, behaviour (histograms and running speed vs pupil dilation) and neuron positions
(``cell_motor_coordinates``). Scans are read through the data layer (validated, cached at model
resolution), so the stimuli are shown as the model sees them.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sensorium.atomic import atomic_write, save_figure, write_text
from sensorium.config import DataConfig
from sensorium.data.format import TIERS

BEHAVIOR = ("pupil", "dpupil", "running")  # pupil dilation, its derivative, running speed
FIGURES = ("stimuli.png", "responses.png", "behavior.png", "neurons.png")
_RESPONSE_TIERS = ("train", "validation")  # never withheld, also in competition scans
_MAX_ROWS = 500  # trials sampled per scan for the response histograms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data", nargs="+", type=Path, metavar="DATA", help="scan folders, .zip files or directories of them"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first DATA>/inspect)")
    parser.add_argument(
        "--cache-dir", default=DataConfig().cache_dir, help="preprocessed scan cache (default: %(default)s)"
    )


def _repeats(image_ids: np.ndarray) -> str:
    """Presentations per image, '10' when all equal, else 'min-max'; '-' for an empty tier."""
    if len(image_ids) == 0:
        return "-"
    counts = np.unique(image_ids, return_counts=True)[1]
    return str(counts.min()) if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"


def summarise(scan) -> dict[str, object]:
    """One row of the summary table for a :class:`sensorium.data.Scan` (raw units)."""
    row: dict[str, object] = {
        "scan": scan.key,
        "role": "competition" if scan.is_competition else "pre-training",
        "neurons": scan.n_neurons,
        "trials": scan.n_trials,
    }
    for tier in TIERS:
        row[tier] = int((scan.tiers == tier).sum())
    for tier in ("test", "final_test"):
        ids = scan.image_ids[scan.tiers == tier]
        row[f"{tier}_images"] = len(np.unique(ids))
        row[f"{tier}_repeats"] = _repeats(ids)
    responses = np.asarray(scan.responses[np.isin(scan.tiers, _RESPONSE_TIERS)])
    row["response_mean"] = round(float(responses.mean()), 4) if responses.size else float("nan")
    row["response_zero_fraction"] = round(float((responses == 0).mean()), 4) if responses.size else float("nan")
    behavior = np.asarray(scan.behavior, dtype=np.float64)
    for j, name in enumerate(BEHAVIOR):
        row[f"{name}_mean"] = round(float(behavior[:, j].mean()), 4)
        row[f"{name}_std"] = round(float(behavior[:, j].std()), 4)
    return row


def write_tables(rows: list[dict[str, object]], out: Path) -> str:
    """Write ``summary.csv`` (one row per scan) and ``summary.md`` (one column per scan); return the latter."""
    with atomic_write(out / "summary.csv", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| | " + " | ".join(str(r["scan"]) for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    lines += [f"| {field} | " + " | ".join(str(r[field]) for r in rows) + " |" for field in list(rows[0])[1:]]
    markdown = "\n".join(lines) + "\n"
    write_text(out / "summary.md", markdown)
    return markdown


def _save(fig: Figure, path: Path) -> None:
    FigureCanvasAgg(fig)
    save_figure(fig, path, dpi=100)


def _sample_rows(scan, tiers: tuple[str, ...], k: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(np.isin(scan.tiers, tiers))
    return np.sort(rng.choice(rows, size=min(k, len(rows)), replace=False))


def plot_stimuli(scans: list, path: Path, n: int = 6) -> None:
    """``n`` train stimuli per scan, one row per scan, gray scale 0-255."""
    fig = Figure(figsize=(2.0 * n, 1.3 * len(scans) + 0.4), layout="constrained")
    axes = fig.subplots(len(scans), n, squeeze=False)
    for scan, row in zip(scans, axes):
        picks = _sample_rows(scan, ("train",), n, np.random.default_rng(0))
        for ax, i in zip(row, picks):
            ax.imshow(scan.images[i, 0], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{scan.key} image {scan.image_ids[i]}", fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.suptitle(f"example stimuli at model resolution {scans[0].images.shape[2]}x{scans[0].images.shape[3]}")
    _save(fig, path)


def plot_responses(scans: list, path: Path) -> None:
    """Per scan: histogram of single-trial responses and of each neuron's mean response (train+validation)."""
    fig = Figure(figsize=(9, 2.6 * len(scans)), layout="constrained")
    axes = fig.subplots(len(scans), 2, squeeze=False)
    for scan, (left, right) in zip(scans, axes):
        rows = _sample_rows(scan, _RESPONSE_TIERS, _MAX_ROWS, np.random.default_rng(0))
        values = np.asarray(scan.responses[rows], dtype=np.float64)
        left.hist(values.ravel(), bins=60, log=True, color="tab:blue")
        left.set(title=f"{scan.key}: single-trial responses", xlabel="response (raw units)", ylabel="count")
        right.hist(values.mean(axis=0), bins=40, color="tab:orange")
        right.set(title=f"{scan.key}: mean response per neuron", xlabel="mean response", ylabel="neurons")
    _save(fig, path)


def plot_behavior(scans: list, path: Path) -> None:
    """Per scan: a histogram of each behaviour channel and running speed against pupil dilation."""
    fig = Figure(figsize=(13, 2.6 * len(scans)), layout="constrained")
    axes = fig.subplots(len(scans), 4, squeeze=False)
    labels = ("pupil dilation", "pupil dilation derivative", "running speed")
    for scan, row in zip(scans, axes):
        behavior = np.asarray(scan.behavior)
        for j, ax in enumerate(row[:3]):
            ax.hist(behavior[:, j], bins=40, color="tab:green")
            ax.set(title=f"{scan.key}: {labels[j]}", ylabel="trials")
        row[3].scatter(behavior[:, 0], behavior[:, 2], s=3, alpha=0.4)
        row[3].set(title=f"{scan.key}: running vs pupil", xlabel="pupil dilation", ylabel="running speed")
    _save(fig, path)


def plot_neurons(scans: list, path: Path) -> None:
    """Per scan: cortical x, y of every neuron (microns), coloured by depth z."""
    fig = Figure(figsize=(4.2 * len(scans), 3.8), layout="constrained")
    axes = fig.subplots(1, len(scans), squeeze=False)[0]
    for scan, ax in zip(scans, axes):
        xyz = np.asarray(scan.cell_motor_coordinates)
        points = ax.scatter(xyz[:, 0], xyz[:, 1], c=xyz[:, 2], s=4, cmap="viridis")
        fig.colorbar(points, ax=ax, label="z (microns)", shrink=0.8)
        ax.set(title=f"{scan.key}: {scan.n_neurons} neurons", xlabel="x (microns)", ylabel="y (microns)")
        ax.set_aspect("equal")
    _save(fig, path)


def default_out(data: Path) -> Path:
    """``<DATA>/inspect`` for a directory, next to the file (``<parent>/inspect``) for a zip."""
    return (data if data.is_dir() else data.parent) / "inspect"


def inspect(
    data: list[Path], out: Path, cfg: DataConfig, progress: bool = True
) -> tuple[list[dict[str, object]], str]:
    """Load the scans under ``data``, write summary.md, summary.csv and FIGURES into ``out``.

    Returns the table rows (one dict per scan) and its markdown.
    """
    from sensorium.data import load_scan, resolve_scan_paths

    scans = [load_scan(path, cfg, progress=progress) for path in resolve_scan_paths(data)]
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarise(scan) for scan in scans]
    markdown = write_tables(rows, out)
    for name, plot in zip(FIGURES, (plot_stimuli, plot_responses, plot_behavior, plot_neurons)):
        plot(scans, out / name)
    return rows, markdown


def run(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else default_out(args.data[0])
    _, markdown = inspect(list(args.data), out, DataConfig(cache_dir=str(args.cache_dir)))
    print(markdown, end="")
    print(f"wrote summary.md, summary.csv and {', '.join(FIGURES)} to {out}")
    return 0
