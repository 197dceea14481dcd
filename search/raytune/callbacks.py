"""Driver-side Ray Tune callbacks: a compact live table of trials, and TensorBoard curves + HParams.

Both run in the driver process and see every trial's start, per-epoch results, completion and error.

TensorBoard layout (``tensorboard --logdir RUN_DIR``): one run per trial folder, holding the per-epoch
scalars (``val_corr``, ``best_val_corr``, ``train_loss``, ``lr``, ...) and the HParams session of the
trial with every resolved config value but the machine's paths (``MACHINE_PATHS``), the searched keys first.
The session-start entry is written when the trial starts, and the HParams table reads metric values from the
latest scalars, so running and early-stopped trials show their current best validation correlation. One
experiment entry at the root lists the columns. TensorBoard orders them itself: those marked as differing
between trials first, each group by name; the searched keys are marked so (they do differ), so they are the
table's first columns and the fixed ones follow.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ray import tune
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboardX import SummaryWriter
from tensorboardX.proto.api_pb2 import Status
from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData, SessionEndInfo
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.summary import hparams

from search.spec.space import SearchSpec
from search.store.schema import TRIAL_ERROR, TRIAL_METRICS, ran_to_end

# Scalars written per epoch; the first ones are the HParams table's metric columns.
HPARAM_METRICS = ("best_val_corr", "val_corr", "best_epoch", "epoch")
SCALARS = tuple(dict.fromkeys((*HPARAM_METRICS, *TRIAL_METRICS)))  # every per-epoch metric, once
# Config keys that say where things are on the machine that ran the trial, not what was trained: not hyperparameters.
MACHINE_PATHS = ("data.scans", "data.cache_dir")


def trial_hparams(spec: SearchSpec, params: dict[str, Any]) -> dict[str, Any]:
    """All leaf values of the trial's resolved config, flat by dotted key (lists joined as text), the searched
    keys first (in the search file's order), then the fixed ones."""
    flat = _flat(spec.resolve(params).to_dict())
    searched = {k: flat[k] for k in spec.keys() if k in flat}
    return {**searched, **{k: v for k, v in flat.items() if k not in searched and k not in MACHINE_PATHS}}


def hparam_columns(spec: SearchSpec) -> dict[str, Any]:
    """The HParams table's columns with a value of each column's type: every searched key first (also those of
    options a trial may not choose, e.g. an SE core's se_reduction), then the base config's fixed keys (not the
    ``MACHINE_PATHS``)."""
    searched = {key: p.edge_values()[0] for key, p in spec.first_params().items()}
    fixed = {k: v for k, v in _flat(spec.base.to_dict()).items() if k not in searched and k not in MACHINE_PATHS}
    return {**searched, **fixed}


def experiment_summary(spec: SearchSpec, metrics: dict[str, float]) -> Summary:
    """The HParams experiment entry: ``hparam_columns`` with the searched keys marked as differing between trials
    (a field of TensorBoard's own HParamInfo that tensorboardX's lacks; TensorBoard lists those columns first)."""
    experiment, _, _ = hparams(hparam_columns(spec), metrics)
    plugin = experiment.value[0].metadata.plugin_data
    content = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
    searched = set(spec.keys())
    for info in content.experiment.hparam_infos:
        info.differs = info.name in searched
    plugin.content = content.SerializeToString()
    return experiment


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = ",".join(map(str, value)) if isinstance(value, list) else value
    return flat


class LiveTable(tune.Callback):
    """Prints a compact table (trial, status, epoch, val_corr, best, best epoch) as the search goes.

    The whole table at most every ``every_s`` seconds, plus one line when a trial ends or fails.
    """

    def __init__(self, max_t: int, every_s: float = 20.0, stream: TextIO | None = None) -> None:
        self.max_t = max_t
        self.every_s = every_s
        self.stream = stream  # None: sys.stdout at print time (the callback is pickled with the Tuner)
        self.rows: dict[str, dict[str, Any]] = {}
        self._last_print = 0.0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.rows.setdefault(trial.trial_id, {"status": "running"})["status"] = "running"
        self._line(f"trial {trial.trial_id} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self.rows.setdefault(trial.trial_id, {})
        row.update(status="running", **{k: result.get(k) for k in ("epoch", "val_corr", "best_val_corr")})
        row["best_epoch"] = result.get("best_epoch")
        if time.monotonic() - self._last_print >= self.every_s:
            self.print_table()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = (trial.last_result or {}).get(TRIAL_ERROR)
        if reason is not None:  # the trial's own failure: recorded once, not retried
            self._end(trial, "failed", status="failed", reason=str(reason))
        else:
            self._end(trial, "ended")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed on its node (no retries left)", status="error")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self.rows.setdefault(trial.trial_id, {})
        row["retries"] = row.get("retries", 0) + 1
        row["status"] = "retrying"
        at = "its start" if trial.checkpoint is None else "its latest checkpoint"
        self._line(f"trial {trial.trial_id}: its worker or node was lost; restarting from {at} "
                   f"(retry {row['retries']})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.print_table()

    def _end(self, trial: Any, verb: str, status: str | None = None, reason: str | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {})
        epoch = row.get("epoch")
        row["status"] = status or ("done" if ran_to_end(trial.last_result or {}, self.max_t) else "stopped")
        if row["status"] == "stopped":
            verb = "stopped early"
        best = _fmt(row.get("best_val_corr"))
        if reason is not None:
            where = f": {reason}"
        elif status == "error" and getattr(trial, "error_file", None):
            where = f" (error file: {trial.error_file})"
        else:
            where = ""
        at = "-" if epoch is None else int(epoch)
        self._line(f"trial {trial.trial_id} {verb} at epoch {at}, best val corr {best}{where}")

    def print_table(self, top: int = 10) -> None:
        """Print the running trials and the ``top`` best others, best first; the rest as one count."""
        self._last_print = time.monotonic()
        header = f"{'trial':<14}{'status':<9}{'epoch':>6}{'val_corr':>10}{'best':>9}{'@ep':>5}{'retries':>8}"
        lines = [header]
        order = sorted(self.rows.items(), key=lambda kv: -_num(kv[1].get("best_val_corr")))
        ended = [kv for kv in order if kv[1].get("status") != "running"]
        shown = [kv for kv in order if kv[1].get("status") == "running" or kv in ended[:top]]
        for trial_id, row in shown:
            epoch = row.get("epoch")
            lines.append(
                f"{trial_id:<14}{row.get('status', ''):<9}{_int(epoch):>6}"
                f"{_fmt(row.get('val_corr')):>10}{_fmt(row.get('best_val_corr')):>9}"
                f"{_int(row.get('best_epoch')):>5}{row.get('retries', 0):>8}"
            )
        if len(shown) < len(order):
            lines.append(f"... and {len(order) - len(shown)} more ended trials")
        statuses = [row.get("status") for row in self.rows.values()]
        retried = sum(row.get("retries", 0) for row in self.rows.values())
        lines.append(f"failed by themselves: {statuses.count('failed')}, lost to infrastructure: "
                     f"{statuses.count('error')}, restarts after a lost worker or node: {retried}")
        print("\n".join(lines), file=self.stream or sys.stdout, flush=True)

    def _line(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream or sys.stdout, flush=True)


class TensorBoardHParams(tune.Callback):
    """Per-trial TensorBoard writer: HParams session at trial start, scalars every epoch, status at end."""

    def __init__(self, spec: SearchSpec) -> None:
        self.spec = spec
        self.writers: dict[str, SummaryWriter] = {}
        self._experiment_written = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        metrics = {m: 0.0 for m in HPARAM_METRICS}
        _, session_start, _ = hparams(trial_hparams(self.spec, trial.config), metrics)
        if not self._experiment_written:  # the column list, once at the experiment root
            root = SummaryWriter(str(Path(_logdir(trial)).parent))
            root.file_writer.add_summary(experiment_summary(self.spec, metrics))
            root.close()
            self._experiment_written = True
        writer = self._writer(trial)
        writer.file_writer.add_summary(session_start)
        writer.flush()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        writer = self._writer(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        for key in SCALARS:
            value = result.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(key, float(value), step)
        writer.flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        failed = TRIAL_ERROR in (trial.last_result or {})
        self._close(trial, Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, Status.Value("STATUS_FAILURE"))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()

    def _writer(self, trial: Any) -> SummaryWriter:
        if trial.trial_id not in self.writers:
            self.writers[trial.trial_id] = SummaryWriter(_logdir(trial))
        return self.writers[trial.trial_id]

    def _close(self, trial: Any, status: int) -> None:
        writer = self._writer(trial)
        content = HParamsPluginData(session_end_info=SessionEndInfo(status=status), version=0)
        meta = SummaryMetadata(
            plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content.SerializeToString())
        )
        writer.file_writer.add_summary(Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=meta)]))
        writer.close()
        self.writers.pop(trial.trial_id, None)


def _logdir(trial: Any) -> str:
    """The trial folder in the run directory itself when that is a local path (TensorBoard sees every epoch
    at once), else the driver's staging copy that Ray uploads to remote storage."""
    if trial.storage.storage_filesystem.type_name == "local":
        return str(trial.path)
    return str(trial.local_path)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else -math.inf


def _int(value: Any) -> str:
    """An epoch as a whole number, or '-' where there is none yet (None, NaN: a trial failed before it)."""
    return str(int(value)) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
