"""Write, read and score the official SENSORIUM 2022 submission CSVs (SENSORIUM.md §5).

One row per trial of a tier, columns ``trial_indices`` (the scan's ``trial_idx`` value: an int, or a
32-hex string in the competition scans), ``image_ids`` (``frame_image_id``), ``prediction`` (a Python
list literal of one float per neuron) and ``neuron_ids`` (the list of unit ids, the same on every row).
Ground-truth files have ``responses`` instead of ``prediction``. Values are in the loader's standardised
response units. Rows are keyed by trial id and columns by neuron id, never by position: the scorer
sorts both files by trial id and neuron id and requires the ids to match exactly.

Trial ids are handled as strings throughout (``12`` and ``"12"`` are the same trial), so integer and
hashed ids are compared the same way.

Ground truth comes in several layouts: the synthetic generator's ``<dir>/<data key>/ground_truth_live_test.csv``,
the official kit's ``ground_truth_file_test.csv`` / ``ground_truth_file_final_test.csv`` (one folder per scan,
or several scans' files renamed side by side). :func:`match_ground_truth` takes any of them: every ``*.csv``
under a folder that is a ground-truth file is matched to a scan's tier by its set of trial ids.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sensorium import metrics
from sensorium.atomic import atomic_write
from sensorium.errors import UserError

ID_COLUMNS = ("trial_indices", "image_ids", "neuron_ids")
VALUE_COLUMNS = ("prediction", "responses")
# official submission file name -> the tier whose trials it holds (SENSORIUM.md §5)
SUBMISSION_FILES = {"submission_file_live_test.csv": "test", "submission_file_final_test.csv": "final_test"}
# tier -> ground-truth file name the synthetic generator writes (<ground truth>/<data key>/<name>); the official
# kit's are ground_truth_file_<tier>.csv. Scoring finds either by its trial ids (match_ground_truth), not its name.
GROUND_TRUTH_FILES = {"test": "ground_truth_live_test.csv", "final_test": "ground_truth_final_test.csv"}

_INT = re.compile(r"^-?\d+$")


def _id_strings(values: Sequence | np.ndarray, what: str) -> np.ndarray:
    """Trial ids as a (T,) array of str: ints written as decimal, strings (or bytes) as they are."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise UserError(f"{what} must be one-dimensional, got shape {values.shape}")
    if values.dtype.kind in "iu":
        return np.array([str(int(v)) for v in values], dtype=str)
    if values.dtype.kind in "US" or values.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=str)
    raise UserError(f"{what} must be integers or strings, got dtype {values.dtype}")


def _int_ids(values: Sequence | np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise UserError(f"{what} must be a one-dimensional integer array, got {values.dtype} {values.shape}")
    return values.astype(np.int64)


def _row_order(trial_ids: np.ndarray) -> np.ndarray:
    """Row order by trial id: numeric when every id is an integer, else lexicographic (stable)."""
    if all(_INT.match(t) for t in trial_ids):
        return np.argsort(trial_ids.astype(np.int64), kind="stable")
    return np.argsort(trial_ids, kind="stable")


def _examples(values: Sequence, k: int = 3) -> str:
    shown = ", ".join(str(v) for v in list(values)[:k])
    return f"{shown}, ..." if len(values) > k else shown


def _duplicates(values: np.ndarray) -> np.ndarray:
    unique, counts = np.unique(values, return_counts=True)
    return unique[counts > 1]


def _check_unique(values: np.ndarray, what: str, where: str) -> None:
    dup = _duplicates(values)
    if len(dup):
        raise UserError(f"{where}: {len(dup)} duplicate {what} (e.g. {_examples(dup)})")


def _format_values(values: np.ndarray) -> str:
    """A Python list literal of float32 values, each in its shortest round-tripping form."""
    return "[" + ", ".join(values.astype(str)) + "]"


def write_submission(
    path: str | Path,
    trial_ids: Sequence | np.ndarray,
    image_ids: Sequence | np.ndarray,
    neuron_ids: Sequence | np.ndarray,
    predictions: np.ndarray,
    overwrite: bool = False,
    column: str = "prediction",
) -> Path:
    """Write one official CSV atomically and return its path.

    trial_ids (T,) int or str; image_ids (T,) int; neuron_ids (n,) int; predictions (T, n) float, row t
    and column j belonging to trial_ids[t] and neuron_ids[j], stored as float32. ``column="responses"``
    writes a ground-truth file. Rows are written sorted by trial id.

    Refuses (UserError): length mismatches, an empty table, duplicate trial or neuron ids, non-finite
    values, an unknown ``column``, and an existing ``path`` unless ``overwrite``. The file is written whole
    or not at all (:func:`sensorium.atomic.atomic_write`): a failure (a full disk: WriteError naming the
    file) leaves no partial file and an overwritten one as it was.
    """
    path = Path(path)
    if column not in VALUE_COLUMNS:
        raise UserError(f"column must be one of {VALUE_COLUMNS}, got {column!r}")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; refusing to overwrite it (use --force / overwrite=True)")
    trials = _id_strings(trial_ids, "trial ids")
    images = _int_ids(image_ids, "image ids")
    neurons = _int_ids(neuron_ids, "neuron ids")
    values = np.asarray(predictions, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise UserError(f"{path.name}: {column} must be a non-empty (trials, neurons) array, got {values.shape}")
    for what, got, want in (
        ("trial ids", len(trials), values.shape[0]),
        ("image ids", len(images), values.shape[0]),
        ("neuron ids", len(neurons), values.shape[1]),
    ):
        if got != want:
            raise UserError(
                f"{path.name}: {column} has shape {values.shape} but there are {got} {what} ({want} expected)"
            )
    _check_unique(trials, "trial ids", path.name)
    _check_unique(neurons, "neuron ids", path.name)
    bad = ~np.isfinite(values)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise UserError(
            f"{path.name}: {int(bad.sum())} non-finite {column} values in {int(bad.any(axis=1).sum())} trials "
            f"(first: trial {trials[t]}, neuron {neurons[j]})"
        )
    neuron_text = "[" + ", ".join(str(int(n)) for n in neurons) + "]"
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["trial_indices", "image_ids", column, "neuron_ids"])
        for t in _row_order(trials):
            writer.writerow([trials[t], int(images[t]), _format_values(values[t]), neuron_text])
    return path


def _parse_list(text: str, dtype: type, path: Path, line: int, column: str) -> np.ndarray:
    text = text.strip()
    try:
        if not (text.startswith("[") and text.endswith("]")):
            raise ValueError("not a list")
        return np.array(text[1:-1].replace(",", " ").split(), dtype=dtype)
    except (ValueError, OverflowError):
        raise UserError(
            f"{path}: line {line}: column {column} is not a list of {dtype.__name__}s: {text[:40]!r}"
        ) from None


def read_submission(
    path: str | Path, column: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate one official CSV (submission or ground truth).

    Returns ``(trial_ids (T,) str, image_ids (T,) int64, neuron_ids (n,) int64, values (T, n) float64)``
    in file order. ``column`` is ``"prediction"`` or ``"responses"``; ``None`` takes whichever the file
    has (``prediction`` if both). Raises UserError naming the file for a missing file or column, an
    unparsable row, rows of different lengths or neuron ids, duplicate ids and non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    if column is None:
        column = next((c for c in VALUE_COLUMNS if c in table.columns), VALUE_COLUMNS[0])
    missing = [c for c in (*ID_COLUMNS, column) if c not in table.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))})")
    if len(table) == 0:
        raise UserError(f"{path}: no rows")
    trials = np.array([t.strip() for t in table["trial_indices"]], dtype=str)
    first_neurons = table["neuron_ids"].iloc[0]
    neurons = _parse_list(first_neurons, int, path, 2, "neuron_ids").astype(np.int64)
    values = np.empty((len(table), len(neurons)), dtype=np.float64)
    images = np.empty(len(table), dtype=np.int64)
    for i, (image, row, row_neurons) in enumerate(zip(table["image_ids"], table[column], table["neuron_ids"])):
        line = i + 2  # the header is line 1
        if row_neurons != first_neurons and not np.array_equal(
            _parse_list(row_neurons, int, path, line, "neuron_ids"), neurons
        ):
            raise UserError(f"{path}: line {line}: neuron_ids differ from the first row's")
        if not _INT.match(image.strip()):
            raise UserError(f"{path}: line {line}: image_ids is not an integer: {image[:40]!r}")
        images[i] = int(image)
        parsed = _parse_list(row, float, path, line, column)
        if len(parsed) != len(neurons):
            raise UserError(f"{path}: line {line}: {len(parsed)} {column} values for {len(neurons)} neuron ids")
        values[i] = parsed
    _check_unique(trials, "trial ids", str(path))
    _check_unique(neurons, "neuron ids", str(path))
    bad = ~np.isfinite(values)
    if bad.any():
        raise UserError(f"{path}: {int(bad.sum())} non-finite {column} values in {int(bad.any(axis=1).sum())} rows")
    return trials, images, neurons, values


def _mismatch(kind: str, sub: np.ndarray, gt: np.ndarray) -> str | None:
    """'N <kind> missing (e.g. ...), M extra (e.g. ...)' or None when the id sets are equal."""
    missing = np.setdiff1d(gt, sub)
    extra = np.setdiff1d(sub, gt)
    parts = [
        f"{len(ids)} {kind} {label} (e.g. {_examples(ids)})"
        for ids, label in ((missing, "missing"), (extra, "extra"))
        if len(ids)
    ]
    return ", ".join(parts) or None


def score_files(submission_csv: str | Path, ground_truth_csv: str | Path) -> dict[str, float]:
    """Score a submission against a ground-truth CSV of the same tier (both in standardised units).

    Rows are aligned by trial id and columns by neuron id (both files are sorted), so row and neuron
    order do not matter; the id sets must match exactly and each trial must carry the same image id in
    both files. Returns :func:`sensorium.metrics.score_all` of the aligned arrays (FEVE may be nan).
    """
    sub_trials, sub_images, sub_neurons, pred = read_submission(submission_csv)
    gt_trials, gt_images, gt_neurons, resp = read_submission(ground_truth_csv)
    problems = [
        p
        for p in (_mismatch("trial ids", sub_trials, gt_trials), _mismatch("neuron ids", sub_neurons, gt_neurons))
        if p
    ]
    if problems:
        raise UserError(f"{submission_csv} does not match {ground_truth_csv}: {'; '.join(problems)}")
    sub_rows, gt_rows = np.argsort(sub_trials), np.argsort(gt_trials)
    differ = sub_images[sub_rows] != gt_images[gt_rows]
    if differ.any():
        raise UserError(
            f"{submission_csv}: {int(differ.sum())} trials carry other image ids than in {ground_truth_csv} "
            f"(e.g. trial {_examples(gt_trials[gt_rows][differ])})"
        )
    if len(gt_trials) < 2 or len(gt_neurons) < 1:
        raise UserError(
            f"{ground_truth_csv}: scores need at least 2 trials and 1 neuron, got {len(gt_trials)} trials and "
            f"{len(gt_neurons)} neurons"
        )
    pred = pred[sub_rows][:, np.argsort(sub_neurons)]
    resp = resp[gt_rows][:, np.argsort(gt_neurons)]
    return metrics.score_all(pred, resp, gt_images[gt_rows])


@dataclass(frozen=True)
class GroundTruthMatch:
    """What :func:`match_ground_truth` found under a folder."""

    root: Path  # the folder searched
    files: dict[tuple[str, str], Path]  # (data key, tier) -> the ground-truth CSV holding exactly its trials
    tried: dict[Path, str]  # every *.csv read -> what it is ("<key> <tier>", or why it matched nothing)

    def by_key(self) -> dict[str, dict[str, str]]:
        """data key -> tier -> the matched CSV's path (JSON-ready)."""
        found: dict[str, dict[str, str]] = {}
        for (key, tier), path in self.files.items():
            found.setdefault(key, {})[tier] = str(path)
        return found

    def tried_text(self, limit: int = 5) -> str:
        """The CSVs read and what each is, on one line (the first ``limit``, then how many more)."""
        if not self.tried:
            return "no *.csv file there"
        shown = [f"{path} ({what})" for path, what in list(self.tried.items())[:limit]]
        more = len(self.tried) - limit
        return "tried " + "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def ground_truth_trial_ids(path: str | Path) -> np.ndarray | None:
    """The trial ids (T,) str of a ground-truth CSV (columns trial_indices, image_ids, responses, neuron_ids, in
    any order), or None when ``path`` is no such file. Reads the header, then the trial_indices column only;
    the rest is validated when the file is scored (:func:`score_files`)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if not {*ID_COLUMNS, "responses"} <= {c.strip() for c in header}:
            return None
        column = pd.read_csv(path, usecols=["trial_indices"], dtype=str, keep_default_na=False)["trial_indices"]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):  # pandas' parser errors are ValueErrors
        return None
    return np.array([t.strip() for t in column], dtype=str)


def match_ground_truth(root: str | Path, tiers: Mapping[tuple[str, str], Sequence | np.ndarray]) -> GroundTruthMatch:
    """The ground-truth CSV of each (data key, tier) in ``tiers`` found under the folder ``root``, at any depth
    and under any name: a file matches the tier whose trial ids ``tiers[(key, tier)]`` ((T,) int or str, as the
    scan or a submission holds them) are exactly the set of its ``trial_indices``. Competition scans' ids are
    32-hex hashes, so a file matches one scan's tier only; when two files hold the same trials the first in path
    order is taken. Files are read in path order; ``tried`` says what each one is.

    >>> found = match_ground_truth("runs/synth/ground_truth", {("1-2-3", "test"): trial_ids})  # doctest: +SKIP
    >>> found.files                                                     # doctest: +SKIP
    {('1-2-3', 'test'): PosixPath('runs/synth/ground_truth/1-2-3/ground_truth_live_test.csv')}
    """
    wanted = {slot: frozenset(_id_strings(ids, f"trial ids of {slot[0]} {slot[1]}")) for slot, ids in tiers.items()}
    names = "/".join(sorted({tier for _, tier in wanted}))
    files: dict[tuple[str, str], Path] = {}
    tried: dict[Path, str] = {}
    for path in sorted(Path(root).rglob("*.csv")):
        ids = ground_truth_trial_ids(path)
        if ids is None:
            tried[path] = "not a ground-truth file"
            continue
        slots = [slot for slot, want in wanted.items() if want == frozenset(ids)]
        new = [slot for slot in slots if slot not in files]
        files.update((slot, path) for slot in new)
        if new:
            tried[path] = ", ".join(f"{key} {tier}" for key, tier in new)
        elif slots:
            tried[path] = f"the same trials as {files[slots[0]]}"
        else:
            tried[path] = f"{len(ids)} trials, those of no scan's {names} tier"
    return GroundTruthMatch(Path(root), files, tried)
