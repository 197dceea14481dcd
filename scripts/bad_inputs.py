"""Every bad input the command line refuses, tried for real; writes the table ``results/bad_inputs.md``.

    .venv/bin/python scripts/bad_inputs.py [--out results/bad_inputs.md] [--jobs 2]

Each case builds its bad input in its own temporary folder from one small good synthetic scan (the tiny
``synth`` preset with one scan), runs ``python -m sensorium.cli ...`` as a subprocess in that folder and
records the exit code and what the command printed on stderr. The table shows the commands and messages
with the temporary paths replaced by placeholders (``<scan>``, ``<tmp>``, ...), and prints it.
``tests/test_bad_inputs.py`` runs the same cases and checks each refusal: exit code 2, exactly one stderr
line starting with ``error:`` that names the file or key, no traceback, nothing written that a refused
command must not write.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "results" / "bad_inputs.md"
TIMEOUT_S = 180  # per command; each one is refused within seconds
_RAY_NODE = re.compile(r"\d+\.\d+\.\d+\.\d+ \([0-9a-f]{8}\)")  # a Ray node label: address (node id prefix)


@dataclass(frozen=True)
class Good:
    """The good synthetic inputs every case starts from: one scan folder and its live-test ground truth."""

    scan: Path
    ground_truth_csv: Path


@dataclass(frozen=True)
class Invocation:
    """One command of a case: the arguments after ``sensorium-search`` and what the refusal must show.

    ``names``: text the error message must contain (after placeholders), the file or key at fault.
    ``placeholders``: path -> placeholder for the table (the case folder itself is always ``<tmp>``).
    ``must_not_exist``: globs, relative to the case folder, that the refused command must not create.
    """

    argv: list[str]
    names: str
    placeholders: dict[Path, str] = field(default_factory=dict)
    must_not_exist: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    """A bad input: its title and a builder that writes it into a folder and returns the command."""

    title: str
    build: Callable[[Path, Good], Invocation]

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass(frozen=True)
class Outcome:
    """What one case's command did: exit code, raw stdout/stderr, and the shortened command and message."""

    case: Case
    invocation: Invocation
    folder: Path
    command: str
    returncode: int
    stdout: str
    stderr: str
    message: str

    @property
    def created(self) -> list[str]:
        """The ``must_not_exist`` globs that matched something after the command ran."""
        return [g for g in self.invocation.must_not_exist if any(self.folder.glob(g))]


# ------------------------------------------------------------------------------------------- helpers
def _copy_scan(folder: Path, good: Good, name: str | None = None) -> Path:
    """A copy of the good scan inside ``folder``, under its official name unless ``name`` is given."""
    return Path(shutil.copytree(good.scan, folder / (name or good.scan.name)))


def _train(folder: Path, data: Path, *overrides: str) -> list[str]:
    """``train`` the tiny config for one epoch on ``data`` into ``<tmp>/run``, quietly."""
    sets = [a for o in ("train.max_epochs=1", *overrides) for a in ("--set", o)]
    return ["train", str(ROOT / "configs" / "tiny.yaml"), *sets, "--data", str(data), "--out", str(folder / "run"),
            "--quiet"]


def _inspect(folder: Path, data: Path) -> list[str]:
    """``inspect`` ``data`` into ``<tmp>/inspect``."""
    return ["inspect", str(data), "--out", str(folder / "inspect")]


def _search_file(folder: Path, body: str) -> Path:
    """A search file in ``folder`` on the tiny config (absolute path) with ``body`` appended."""
    path = folder / "search.yaml"
    path.write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\n{body}")
    return path


def _run(folder: Path, search: Path, data: Path, *options: str) -> list[str]:
    """``run`` ``search`` on ``data`` into ``<tmp>/search``, quietly."""
    return ["run", str(search), "--data", str(data), "--out", str(folder / "search"), "--quiet", *options]


def _submission(folder: Path, good: Good, edit: Callable[[list[str]], list[str]]) -> Path:
    """The ground truth as a submission (column ``prediction``), its data rows changed by ``edit``."""
    header, *rows = good.ground_truth_csv.read_text().splitlines()
    columns = header.split(",")
    columns[columns.index("responses")] = "prediction"
    path = folder / "submission.csv"
    path.write_text("\n".join([",".join(columns), *edit(rows)]) + "\n")
    return path


# --------------------------------------------------------------------------------------------- cases
def _truncated_npy(folder: Path, good: Good) -> Invocation:
    scan = _copy_scan(folder, good)
    target = scan / "data" / "responses" / "3.npy"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return Invocation(_train(folder, scan), "<scan>/data/responses/3.npy", {scan: "<scan>"}, ("run",))


def _missing_meta(folder: Path, good: Good) -> Invocation:
    scan = _copy_scan(folder, good)
    (scan / "meta" / "trials" / "frame_image_id.npy").unlink()
    return Invocation(_inspect(folder, scan), "<scan>/meta/trials/frame_image_id.npy", {scan: "<scan>"}, ("inspect",))


def _neuron_count_mismatch(folder: Path, good: Good) -> Invocation:
    scan = _copy_scan(folder, good)
    for path in (scan / "data" / "responses").glob("*.npy"):  # one neuron fewer than meta/neurons/unit_ids.npy
        np.save(path, np.load(path)[:-1])
    return Invocation(_train(folder, scan), "<scan>/data/responses/0.npy", {scan: "<scan>"}, ("run",))


def _nan_responses(folder: Path, good: Good) -> Invocation:
    scan = _copy_scan(folder, good)
    target = scan / "data" / "responses" / "5.npy"
    values = np.load(target)
    values[2] = np.nan
    np.save(target, values)
    return Invocation(_train(folder, scan), "<scan>/data/responses/5.npy", {scan: "<scan>"}, ("run",))


def _corrupt_zip(folder: Path, good: Good) -> Invocation:
    archive = folder / f"{good.scan.name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(good.scan.rglob("*")):
            if path.is_file():
                zf.write(path, Path(good.scan.name) / path.relative_to(good.scan))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # the central directory is lost
    return Invocation(_inspect(folder, archive), "<zip>", {archive: "<zip>"}, ("inspect",))


def _renamed_without_key_meta(folder: Path, good: Good) -> Invocation:
    scan = _copy_scan(folder, good, name="ds")
    (scan / "meta" / "neurons" / "animal_ids.npy").unlink()
    return Invocation(_inspect(folder, scan), "<tmp>/ds/meta/neurons/animal_ids.npy", must_not_exist=("inspect",))


def _unknown_search_key(folder: Path, good: Good) -> Invocation:
    search = _search_file(
        folder,
        "parameters:\n  train.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2, role: nuisance}\n"
        "search: {num_trialz: 2}\n",
    )
    return Invocation(_run(folder, search, good.scan), "num_trialz", {search: "<search.yaml>", good.scan: "<scan>"},
                      ("search",))


def _inverted_range(folder: Path, good: Good) -> Invocation:
    search = _search_file(
        folder, "parameters:\n  train.lr: {type: loguniform, low: 1.0e-2, high: 1.0e-3, role: nuisance}\n"
    )
    return Invocation(_run(folder, search, good.scan), "parameters.train.lr",
                      {search: "<search.yaml>", good.scan: "<scan>"}, ("search",))


def _family_parameter_outside_its_option(folder: Path, good: Good) -> Invocation:
    search = _search_file(
        folder,
        "parameters:\n  model.readout.kind:\n    type: categorical\n    role: scientific\n    choices:\n"
        "      gaussian: {}\n      factorized: {model.shifter.enabled: false}\n"
        "  model.readout.init_noise: {type: loguniform, low: 1.0e-4, high: 1.0e-2, role: nuisance}\n",
    )
    return Invocation(_run(folder, search, good.scan), "parameters.model.readout.init_noise",
                      {search: "<search.yaml>", good.scan: "<scan>"}, ("search",))


def _warm_start_from_other_keys(folder: Path, good: Good) -> Invocation:
    earlier = folder / "earlier"
    earlier.mkdir()
    (earlier / "search.yaml").write_text(
        "parameters:\n  model.core.layers: {type: int, low: 2, high: 4, role: scientific}\n")
    (earlier / "study.json").write_text('{"study_name": "earlier", "storage": "optuna_journal.log"}')
    argv = _run(folder, ROOT / "configs" / "search_tiny.yaml", good.scan, "--warm-start", str(earlier))
    return Invocation(argv, "model.core.layers", {good.scan: "<scan>", earlier: "<earlier run>"}, ("search",))


def _ensemble_of_no_search(folder: Path, good: Good) -> Invocation:
    return Invocation(["ensemble", str(folder / "nope"), "--quiet"], "<tmp>/nope", must_not_exist=("nope",))


def _export_with_a_bad_pick(folder: Path, good: Good) -> Invocation:
    return Invocation(["export", str(folder / "run"), "--pick", "fastest"], "--pick 'fastest'",
                      must_not_exist=("run",))


def _submission_missing_ids(folder: Path, good: Good) -> Invocation:
    submission = _submission(folder, good, lambda rows: rows[1:])
    return Invocation(["evaluate", str(submission), str(good.ground_truth_csv)], "<submission.csv>",
                      {submission: "<submission.csv>", good.ground_truth_csv: "<ground_truth.csv>"})


def _submission_duplicate_ids(folder: Path, good: Good) -> Invocation:
    submission = _submission(folder, good, lambda rows: [*rows, rows[0]])
    return Invocation(["evaluate", str(submission), str(good.ground_truth_csv)], "<submission.csv>",
                      {submission: "<submission.csv>", good.ground_truth_csv: "<ground_truth.csv>"})


def _impossible_resources(folder: Path, good: Good) -> Invocation:
    argv = _run(folder, ROOT / "configs" / "search_tiny.yaml", good.scan,
                "--trials", "1", "--concurrent", "1", "--cpus-per-trial", "64")
    return Invocation(argv, "--cpus-per-trial", {good.scan: "<scan>"}, ("search/trial_*",))


def _whole_gpus_per_trial(folder: Path, good: Good) -> Invocation:
    argv = _run(folder, ROOT / "configs" / "search_tiny.yaml", good.scan, "--gpus-per-trial", "2")
    return Invocation(argv, "search.gpus_per_trial=2", {good.scan: "<scan>"}, ("search",))


def _unknown_config_key(folder: Path, good: Good) -> Invocation:
    return Invocation(_train(folder, good.scan, "model.core.layerz=3"), "model.core.layerz", {good.scan: "<scan>"},
                      ("run",))


def _missing_data_folder(folder: Path, good: Good) -> Invocation:
    return Invocation(_inspect(folder, folder / "nope"), "<tmp>/nope", must_not_exist=("inspect",))


CASES: tuple[Case, ...] = (
    Case("impossible resources (64 CPUs per trial)", _impossible_resources),  # first: the slowest (starts Ray)
    Case("truncated .npy (responses file cut in half)", _truncated_npy),
    Case("missing meta file", _missing_meta),
    Case("mismatched neuron counts (responses vs unit_ids)", _neuron_count_mismatch),
    Case("NaN responses", _nan_responses),
    Case("corrupt zip", _corrupt_zip),
    Case("renamed scan without its data-key meta", _renamed_without_key_meta),
    Case("search file with an unknown key", _unknown_search_key),
    Case("search file with an inverted range", _inverted_range),
    Case("two GPUs per trial (a trial trains on one card)", _whole_gpus_per_trial),
    Case("search file with a family's parameter outside its option", _family_parameter_outside_its_option),
    Case("warm start from a search over other keys", _warm_start_from_other_keys),
    Case("ensemble of a folder that is not a search", _ensemble_of_no_search),
    Case("export with an unknown --pick", _export_with_a_bad_pick),
    Case("submission with missing ids", _submission_missing_ids),
    Case("submission with duplicate ids", _submission_duplicate_ids),
    Case("config with an unknown key", _unknown_config_key),
    Case("missing data folder", _missing_data_folder),
)


# ---------------------------------------------------------------------------------------------- running
def make_good(folder: Path) -> Good:
    """Write the tiny synthetic preset with one (competition) scan into ``folder``."""
    from sensorium.data.synth import SynthConfig, generate

    result = generate(folder, dataclasses.replace(SynthConfig.tiny(seed=0), n_scans=1), progress=False)
    key = result.keys[0]
    return Good(result.scan_paths[0], result.ground_truth_dir / key / "ground_truth_live_test.csv")


def shorten(text: str, placeholders: dict[Path, str], folder: Path) -> str:
    """``text`` with the case's paths as placeholders, the case folder as ``<tmp>``, the checkout root
    dropped (``configs/tiny.yaml``) and Ray node labels as ``<node>``."""
    replacements = {**{str(p): ph for p, ph in placeholders.items()}, str(folder): "<tmp>", f"{ROOT}/": ""}
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return _RAY_NODE.sub("<node>", text)


def run_case(case: Case, work: Path, good: Good) -> Outcome:
    """Build ``case`` in ``work/<slug>`` and run its command there (caches and runs stay in that folder)."""
    folder = work / case.slug
    folder.mkdir()
    invocation = case.build(folder, good)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sensorium.cli", *invocation.argv],
        cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    command = shorten(" ".join(["sensorium-search", *invocation.argv]), invocation.placeholders, folder)
    message = shorten(proc.stderr.strip(), invocation.placeholders, folder)
    return Outcome(case, invocation, folder, command, proc.returncode, proc.stdout, proc.stderr, message)


def run_all(work: Path, jobs: int = 2) -> list[Outcome]:
    """Make the good inputs in ``work``, then run every case, ``jobs`` at a time; outcomes in CASES order."""
    good = make_good(work / "good")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda case: run_case(case, work, good), CASES))


def cell(text: str) -> str:
    """``text`` fit for one markdown table cell (pipes escaped, line breaks shown as ⏎)."""
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def render(outcomes: list[Outcome]) -> str:
    """The markdown page: how it was made, what the placeholders mean, one table row per case."""
    lines = [
        "# Bad input: what the command line says",
        "",
        "Generated by `scripts/bad_inputs.py`; `tests/test_bad_inputs.py` runs the same cases and checks each:",
        "exit code 2, exactly one stderr line, starting with `error:`, naming the file or key at fault, no",
        "traceback, nothing written that a refused command must not write (no run folder, no trial).",
        "Every case starts from one good tiny synthetic scan (`synth --tiny`, one scan) in its own temporary",
        "folder `<tmp>`; `<scan>` is a copy of that scan (or the original, when the case does not change it),",
        "`<zip>` its zip, `<search.yaml>` / `<submission.csv>` the bad file, `<ground_truth.csv>` the scan's",
        "live-test ground truth, `<node>` the local Ray node.",
        "",
        "| case | command | exit | message (stderr) |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(f"| {o.case.title} | `{cell(o.command)}` | {o.returncode} | {cell(o.message)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TABLE, help="markdown file to write (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        outcomes = run_all(Path(tmp).resolve(), jobs=args.jobs)
    page = render(outcomes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(page, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
