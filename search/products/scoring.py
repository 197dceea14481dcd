"""Scoring a product's submissions: the ground truth they are scored against, their scores, the oracle beside
them, and the table that prints them. Shared by ``retrain`` (the seed ensemble) and ``ensemble`` (the trial
ensemble), and the demo that prints both; no Ray here.

The ground truth is a folder of CSVs, given (``--ground-truth``) or found next to the data, matched to the scans'
test tiers by their trial ids in any layout (``sensorium.submission.match_ground_truth``: the synthetic
``<gt>/<key>/ground_truth_<tier>.csv``, the official kit's ``ground_truth_file_<tier>.csv``); the oracle is
reported where ``<gt>/<key>/oracle.json`` exists.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sensorium.config import ExperimentConfig
from sensorium.errors import UserError

if TYPE_CHECKING:
    from sensorium.submission import GroundTruthMatch


def find_ground_truth(cfg: ExperimentConfig) -> Path | None:
    """A ``ground_truth`` folder next to the data (synthetic layout: <out>/data/<scan>, <out>/ground_truth)."""
    for scan in cfg.data.scans:
        path = Path(scan).resolve()
        for folder in (path.parent / "ground_truth", path.parent.parent / "ground_truth", path / "ground_truth"):
            if folder.is_dir():
                return folder
    return None


def ground_truth_files(given: Path | None, cfg: ExperimentConfig,
                       scans: Mapping[str, Any]) -> GroundTruthMatch | None:
    """The ground truth to score the competition scans' submissions against: the folder ``given`` (``--ground-truth``), else one found next
    to the data (:func:`find_ground_truth`), its CSVs matched to each competition scan's test and final_test
    trials (``scans``: data key -> ScanData) by their trial ids, whatever their names and folders.

    None when there is no folder, or when a found one matches nothing (a warning line on stderr names the
    files tried). A given one that is no folder or matches nothing is a UserError naming the files tried.
    Used by ``retrain`` and ``ensemble``.
    """
    from sensorium.predict import competition_keys
    from sensorium.submission import SUBMISSION_FILES, match_ground_truth

    root = Path(given) if given else find_ground_truth(cfg)
    if root is None:
        return None
    if not root.is_dir():
        raise UserError(f"--ground-truth {given}: no such folder")
    keys = competition_keys(scans)
    trials = {(key, tier): np.asarray(scans[key].trial_ids)[scans[key].tier_indices(tier)]
              for key in keys for tier in SUBMISSION_FILES.values()}
    found = match_ground_truth(root, trials)
    if found.files:
        return found
    problem = (f"{root}: no ground-truth CSV there holds the test or final_test trials of scan "
               f"{', '.join(keys)}; {found.tried_text()}")
    if given:
        raise UserError(f"--ground-truth {problem}")
    print(f"warning: ground truth found next to the data, {problem}: submissions not scored",
          file=sys.stderr, flush=True)
    return None


def score_all_files(files: Mapping[str, str], truth: Mapping[tuple[str, str], Path]
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """key -> tier -> scores of every submission file ("<data key>/<file name>" -> path) whose ground truth is
    in ``truth`` ((data key, tier) -> CSV, ``GroundTruthMatch.files``)."""
    from sensorium.submission import SUBMISSION_FILES, score_files

    scores: dict[str, dict[str, dict[str, float]]] = {}
    for rel, path in files.items():
        key, name = rel.split("/")
        tier = SUBMISSION_FILES[name]
        if (key, tier) in truth:
            scores.setdefault(key, {})[tier] = {k: float(v) for k, v in score_files(path, truth[key, tier]).items()}
    return scores


def read_oracle(gt: Path, keys: list[str]) -> dict[str, Any]:
    """key -> tier -> oracle scores (noise-free expected vs noisy responses), where the generator wrote them."""
    found = {}
    for key in keys:
        path = gt / key / "oracle.json"
        if path.is_file():
            found[key] = json.loads(path.read_text())
    return found


def score_table(summary: dict[str, Any]) -> str:
    """A plain-text table: each scored model (``summary["scores"]``: the ensemble and each seed for retrain)
    next to the oracle, per competition scan and tier."""
    scores = summary.get("scores")
    if not scores:
        return "no ground truth found: submissions written, not scored (pass --ground-truth DIR)"
    w = max(12, *(len(model) + 2 for model in scores))  # the model column
    lines = [f"{'model':<{w}}{'scan':<14}{'tier':<12}{'single-trial':>13}{'corr-to-avg':>13}{'FEVE':>10}"]
    rows = list(scores.items())
    for model, per_key in rows:
        for key, tiers in per_key.items():
            for tier, s in tiers.items():
                lines.append(f"{model:<{w}}{key:<14}{tier:<12}{s['single_trial_correlation']:>13.4f}"
                             f"{s['correlation_to_average']:>13.4f}{_f(s.get('feve')):>10}")
    for key, tiers in (summary.get("oracle") or {}).items():
        for tier in ("test", "final_test"):
            if tier in tiers:
                o = tiers[tier]
                lines.append(f"{'oracle':<{w}}{key:<14}{tier:<12}{o['single_trial_correlation']:>13.4f}"
                             f"{o['correlation_to_average']:>13.4f}{'-':>10}")
    return "\n".join(lines)


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and np.isfinite(value) else "-"
