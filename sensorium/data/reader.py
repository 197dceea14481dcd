"""Open an official scan (folder or ``.zip``), validate it, and read it trial by trial.

The user's files are only ever read: a zip is read member by member, never extracted next to it. Every
check raises :class:`sensorium.errors.DataError` naming the offending path (``<zip>:<member>`` inside a
zip) and what was expected. Validation of the meta files happens when a reader opens; each per-trial
array is checked as it is read (:meth:`ScanReader.item`).
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sensorium.data.format import DATA_GROUPS, KEY_META, NEURON_META, TIERS, TRIAL_META
from sensorium.errors import DataError

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?")

_STAT_NAMES = ("mean", "std")  # the only statistics the reference normaliser reads
_ANCHOR = "meta/trials/tiers.npy"  # locates the scan folder inside a zip


# ---------------------------------------------------------------------------------------- locating scans
def is_scan_folder(path: Path) -> bool:
    """A directory with ``data/`` and ``meta/`` sub-folders."""
    return path.is_dir() and (path / "data").is_dir() and (path / "meta").is_dir()


def resolve_scan_paths(entries: Sequence[str | Path]) -> list[Path]:
    """Expand scan folders, official ``.zip`` files and directories holding them; sorted, unique, absolute.

    In a directory holding both ``X/`` and ``X.zip``, the folder is taken and the zip skipped.
    """
    found: set[Path] = set()
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.exists():
            raise DataError(f"{path}: no such scan folder, .zip file or directory")
        if is_scan_folder(path) or (path.is_file() and path.suffix == ".zip"):
            found.add(path.resolve())
        elif path.is_dir():
            children = [c for c in sorted(path.iterdir()) if is_scan_folder(c) or c.suffix == ".zip"]
            folders = {c.name for c in children if c.is_dir()}
            children = [c for c in children if not (c.suffix == ".zip" and c.stem in folders)]
            if not children:
                raise DataError(f"{path}: holds no scan folders (with data/ and meta/) and no .zip files")
            found.update(c.resolve() for c in children)
        else:
            raise DataError(f"{path}: expected a scan folder, an official .zip file or a directory of them")
    return sorted(found)


# ------------------------------------------------------------------------------------------ file access
class _FolderSource:
    """Files of an unpacked scan folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def names(self, rel_dir: str) -> set[str] | None:
        try:
            return set(os.listdir(self.root / rel_dir))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read(self, rel: str) -> bytes | Path:
        path = self.root / rel
        if not path.is_file():
            raise DataError(f"{path}: missing file")
        return path

    def close(self) -> None:
        pass


class _ZipSource:
    """Members of an official zip (``<name>/data/...``); the scan may also sit at the zip's root."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"{path}: not a readable zip file ({err})") from err
        anchors = [
            n[: -len(_ANCHOR)]
            for n in self.zip.namelist()
            if n.endswith(_ANCHOR) and not n.startswith("__MACOSX") and n[: -len(_ANCHOR)].count("/") <= 1
        ]
        if len(anchors) != 1:
            self.zip.close()
            what = "no scan folder" if not anchors else f"{len(anchors)} scan folders"
            raise DataError(f"{path}: holds {what}; expected exactly one <name>/{_ANCHOR}")
        self.prefix = anchors[0]
        self.dirs: dict[str, set[str]] = {}
        for name in self.zip.namelist():
            if name.startswith(self.prefix) and not name.endswith("/"):
                rel_dir, _, base = name[len(self.prefix) :].rpartition("/")
                self.dirs.setdefault(rel_dir, set()).add(base)

    def where(self, rel: str) -> str:
        return f"{self.path}:{self.prefix}{rel}"

    def names(self, rel_dir: str) -> set[str] | None:
        return self.dirs.get(rel_dir)

    def read(self, rel: str) -> bytes | Path:
        try:
            return self.zip.read(self.prefix + rel)
        except KeyError as err:
            raise DataError(f"{self.where(rel)}: missing file") from err
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # e.g. a CRC error
            raise DataError(f"{self.path}: corrupt zip, cannot read {self.prefix}{rel} ({err})") from err

    def close(self) -> None:
        self.zip.close()


def _open_source(path: Path) -> _FolderSource | _ZipSource:
    """The files of the scan folder or zip at ``path``."""
    if path.is_file() and path.suffix == ".zip":
        return _ZipSource(path)
    if is_scan_folder(path):
        return _FolderSource(path)
    raise DataError(f"{path}: expected a scan folder (with data/ and meta/) or an official .zip file")


def _load_npy(source: _FolderSource | _ZipSource, rel: str) -> np.ndarray:
    """One ``.npy`` file of ``source`` (no pickled objects) as an array."""
    raw = source.read(rel)
    try:
        array = np.load(raw if isinstance(raw, Path) else io.BytesIO(raw), allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{source.where(rel)}: not a plain .npy array ({err})") from err
    except (OSError, EOFError) as err:
        raise DataError(f"{source.where(rel)}: unreadable .npy file ({err})") from err
    if not isinstance(array, np.ndarray):
        raise DataError(f"{source.where(rel)}: expected one array, got {type(array).__name__}")
    return array


def read_key_meta(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """``meta/neurons/{animal_ids,sessions,scan_idx}.npy`` of the scan folder or zip at ``path``, as
    name -> (where it was read, array): the data key of a scan whose name carries none
    (:func:`sensorium.data.format.data_key`). Reads only these three files.
    """
    source = _open_source(path)
    try:
        present = source.names("meta/neurons") or set()
        columns = {}
        for name in KEY_META:
            rel = f"meta/neurons/{name}.npy"
            if f"{name}.npy" not in present:
                raise DataError(
                    f"{source.where(rel)}: missing file; {path.name!r} is not named static<key>-GrayImageNet-<hash>, "
                    f"so its data key comes from meta/neurons/{{{','.join(KEY_META)}}}.npy"
                )
            columns[name] = (source.where(rel), _load_npy(source, rel))
        return columns
    finally:
        source.close()


# --------------------------------------------------------------------------------------------- the reader
@dataclass
class StoredMeta:
    """Validated meta arrays of one scan (N trials, n neurons, stored image size H x W)."""

    n_trials: int
    n_neurons: int
    image_shape: tuple[int, int]
    trials: dict[str, np.ndarray]  # TRIAL_META name -> (N,)
    neurons: dict[str, np.ndarray]  # NEURON_META name -> (n,) or (n, 3)
    stats: dict[str, dict[str, np.ndarray]]  # group -> {'mean', 'std'} float32 (meta/statistics/<group>/all)


class ScanReader:
    """An open, validated scan. Use as a context manager; read trials with :meth:`item`.

    >>> with ScanReader(Path("static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6.zip")) as r:
    ...     first_image = r.item("images", 0)        # doctest: +SKIP
    """

    def __init__(self, path: Path) -> None:
        self.source = _open_source(Path(path))
        try:
            self.meta = self._read_meta()
        except BaseException:
            self.source.close()
            raise

    def __enter__(self) -> ScanReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.source.close()

    def load(self, rel: str) -> np.ndarray:
        """One ``.npy`` file (no pickled objects) as an array."""
        return _load_npy(self.source, rel)

    def item(self, group: str, i: int) -> np.ndarray:
        """``data/<group>/<i>.npy``, checked: images (1, H, W), responses (n,), behavior (3,),
        pupil_center (2,); a real numeric dtype; all values finite."""
        rel = f"data/{group}/{i}.npy"
        array = self.load(rel)
        expected = {
            "images": (1, *self.meta.image_shape),
            "responses": (self.meta.n_neurons,),
            "behavior": (3,),
            "pupil_center": (2,),
        }[group]
        if array.shape != expected:
            why = " (one value per neuron of meta/neurons/unit_ids.npy)" if group == "responses" else ""
            raise DataError(f"{self.source.where(rel)}: shape {array.shape}, expected {expected}{why}")
        self._check_numeric(rel, array)
        return array

    # -- validation of meta/ and of the data/ listing ------------------------------------------------
    def _read_meta(self) -> StoredMeta:
        trials = {name: self.load(f"meta/trials/{name}.npy") for name in TRIAL_META}
        n_trials = self._length("meta/trials/tiers.npy", trials["tiers"])
        for name, array in trials.items():
            self._expect_length(f"meta/trials/{name}.npy", array, n_trials, "meta/trials/tiers.npy")
        where = self.source.where("meta/trials/tiers.npy")
        if trials["tiers"].dtype.kind not in "US":
            raise DataError(f"{where}: dtype {trials['tiers'].dtype}, expected strings {list(TIERS)}")
        bad = sorted(set(np.unique(trials["tiers"]).astype(str).tolist()) - set(TIERS))
        if bad:
            raise DataError(f"{where}: unknown tiers {bad}, expected values in {list(TIERS)}")
        trials["tiers"] = trials["tiers"].astype(str)
        trials["frame_image_id"] = self._integers("meta/trials/frame_image_id.npy", trials["frame_image_id"])
        trials["trial_idx"] = self._ids("meta/trials/trial_idx.npy", trials["trial_idx"])
        trials["frame_trial_ts"] = self._seconds("meta/trials/frame_trial_ts.npy", trials["frame_trial_ts"])

        neurons = {name: self.load(f"meta/neurons/{name}.npy") for name in NEURON_META}
        n_neurons = self._length("meta/neurons/unit_ids.npy", neurons["unit_ids"])
        for name, array in neurons.items():
            self._expect_length(f"meta/neurons/{name}.npy", array, n_neurons, "meta/neurons/unit_ids.npy")
        unit_rel = "meta/neurons/unit_ids.npy"
        neurons["unit_ids"] = self._ids(unit_rel, self._integers(unit_rel, neurons["unit_ids"]))
        coords_rel = "meta/neurons/cell_motor_coordinates.npy"
        if neurons["cell_motor_coordinates"].shape != (n_neurons, 3):
            raise DataError(
                f"{self.source.where(coords_rel)}: shape {neurons['cell_motor_coordinates'].shape}, "
                f"expected ({n_neurons}, 3)"
            )
        self._check_numeric(coords_rel, neurons["cell_motor_coordinates"])

        stats = self._read_stats(n_neurons)
        for group in DATA_GROUPS:
            self._check_listing(group, n_trials)
        first = self.load("data/images/0.npy")
        if first.ndim != 3 or first.shape[0] != 1 or min(first.shape) < 1:
            raise DataError(f"{self.source.where('data/images/0.npy')}: shape {first.shape}, expected (1, H, W)")
        return StoredMeta(n_trials, n_neurons, (first.shape[1], first.shape[2]), trials, neurons, stats)

    def _read_stats(self, n_neurons: int) -> dict[str, dict[str, np.ndarray]]:
        sizes = {"images": 1, "responses": n_neurons, "behavior": 3, "pupil_center": 2}
        stats: dict[str, dict[str, np.ndarray]] = {}
        for group in DATA_GROUPS:
            stats[group] = {}
            for name in _STAT_NAMES:
                rel = f"meta/statistics/{group}/all/{name}.npy"
                array = self.load(rel)
                if array.size != sizes[group] or (group != "images" and array.shape != (sizes[group],)):
                    expected = "one value" if group == "images" else f"shape ({sizes[group]},)"
                    raise DataError(f"{self.source.where(rel)}: shape {array.shape}, expected {expected}")
                self._check_numeric(rel, array)
                if name == "std" and (array < 0).any():
                    raise DataError(f"{self.source.where(rel)}: negative standard deviation")
                stats[group][name] = array.astype(np.float32).reshape(-1 if group != "images" else ())
        for group in ("images", "responses"):
            if not stats[group]["std"].max() > 0:
                where = self.source.where(f"meta/statistics/{group}/all/std.npy")
                raise DataError(f"{where}: all zero, expected a positive standard deviation")
        return stats

    def _check_listing(self, group: str, n_trials: int) -> None:
        rel_dir = f"data/{group}"
        names = self.source.names(rel_dir)
        if names is None:
            raise DataError(f"{self.source.where(rel_dir)}: missing folder, expected {n_trials} .npy files")
        names = {n for n in names if not n.startswith(".")}
        expected = {f"{i}.npy" for i in range(n_trials)}
        missing = expected - names
        if missing:
            first = min(missing, key=lambda n: int(n[:-4]))
            raise DataError(
                f"{self.source.where(f'{rel_dir}/{first}')}: missing file ({len(missing)} of {n_trials} missing; "
                f"expected 0.npy .. {n_trials - 1}.npy, one per entry of meta/trials/tiers.npy)"
            )
        if names != expected:
            raise DataError(
                f"{self.source.where(rel_dir)}: {len(names)} files, expected {n_trials} "
                f"(0.npy .. {n_trials - 1}.npy, one per entry of meta/trials/tiers.npy); "
                f"unexpected e.g. {sorted(names - expected)[0]}"
            )

    def _length(self, rel: str, array: np.ndarray) -> int:
        if array.ndim != 1 or len(array) == 0:
            raise DataError(f"{self.source.where(rel)}: shape {array.shape}, expected a non-empty 1-D array")
        return len(array)

    def _expect_length(self, rel: str, array: np.ndarray, n: int, reference: str) -> None:
        if array.ndim == 0 or array.shape[0] != n:
            raise DataError(f"{self.source.where(rel)}: shape {array.shape}, expected {n} entries (as {reference})")

    def _integers(self, rel: str, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind in "iu":
            return array.astype(np.int64)
        if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
            return array.astype(np.int64)
        raise DataError(f"{self.source.where(rel)}: dtype {array.dtype}, expected integers")

    def _seconds(self, rel: str, array: np.ndarray) -> np.ndarray:
        """Trial onsets as float64 seconds after the session's first: from timestamp strings (the official
        ``Timestamp('2019-08-15 13:57:35.012000')`` or a bare ``2019-08-15 13:57:35.012000``), datetime64, or
        numbers (taken as seconds)."""
        if array.dtype.kind in "iuf":
            self._check_numeric(rel, array)
            seconds = array.astype(np.float64)
        elif array.dtype.kind == "M":
            seconds = (array - array.min()).astype("timedelta64[us]").astype(np.float64) / 1e6
        elif array.dtype.kind in "USO":
            found = [_TIMESTAMP.search(str(v)) for v in array]
            bad = next((str(v) for v, m in zip(array, found) if m is None), None)
            if bad is not None:
                raise DataError(f"{self.source.where(rel)}: {bad!r} is not a timestamp (expected e.g. "
                                "'2019-08-15 13:57:35.012000')")
            stamps = np.array([m.group(0).replace(" ", "T") for m in found], dtype="datetime64[us]")
            seconds = (stamps - stamps.min()).astype(np.float64) / 1e6
        else:
            raise DataError(f"{self.source.where(rel)}: dtype {array.dtype}, expected timestamps")
        return seconds - seconds.min()

    def _ids(self, rel: str, array: np.ndarray) -> np.ndarray:
        if array.dtype.kind not in "iuUS":
            raise DataError(f"{self.source.where(rel)}: dtype {array.dtype}, expected integers or strings")
        array = array.astype(str) if array.dtype.kind in "US" else array.astype(np.int64)
        if len(np.unique(array)) != len(array):
            raise DataError(f"{self.source.where(rel)}: duplicate values, expected unique ids")
        return array

    def _check_numeric(self, rel: str, array: np.ndarray) -> None:
        if array.dtype.kind not in "iuf":
            raise DataError(f"{self.source.where(rel)}: dtype {array.dtype}, expected a real number type")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataError(f"{self.source.where(rel)}: {int((~np.isfinite(array)).sum())} non-finite values "
                            f"(NaN or inf), expected finite numbers")
