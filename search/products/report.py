"""``sensorium-search report RUN_DIR``: what the study found, and whether to believe it (tuning playbook).

Writes into ``RUN_DIR/report/``: ``trials.csv`` (every searched parameter, status, best score, best epoch),
``report.md`` (best trial, statuses and failed-trial share, boundary check of the best values, parameter
importances, memory per trial) and PNGs: ``history.png`` (optimisation history), ``importances.png``,
``param_<key>.png`` (score vs value, one per searched parameter) and ``curves.png`` (validation curves of
the top trials); for a cost-aware search (``search.objective: val_corr+cost``) also ``pareto.png`` and a
table of the Pareto front, and for a warm-started one what it imported. Each file is written whole or not
at all (:mod:`sensorium.atomic`).
"""

from __future__ import annotations

import csv
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

from search.spec.space import Param, SearchSpec, active_params
from search.store.results import COSTS, DEFAULT_TOLERANCE, TrialRecord, load_run, pick_trial, status_counts
from sensorium.atomic import atomic_write, save_figure, write_text
from sensorium.errors import UserError

EDGE = 0.1  # a best value within 10% of its range (log scale for loguniform) of an end is "at the edge"
TOP = 5


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write trials.csv, report.md and the PNGs; returns the output folder."""
    run_dir, spec, records = load_run(run_dir)
    if not records:
        raise UserError(f"{run_dir}: the search has no trials yet")
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_trials_csv(records, spec, out / "trials.csv")
    importances, note = _importances(run_dir)
    figures = _plots(records, spec, importances, run_dir, out)
    pareto, pareto_figures = pareto_section(spec, records, out)
    sections = [*pareto, *warm_start_section(run_dir)]
    write_text(out / "report.md", _markdown(run_dir, spec, records, importances, note, figures + pareto_figures,
                                            sections))
    return out


def write_trials_csv(records: list[TrialRecord], spec: SearchSpec, path: Path) -> None:
    """One row per trial, best first: id, status, best score and epoch, epochs run, every searched value."""
    keys = spec.keys()  # every key of the tree; empty where a trial's options do not search it
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["rank", "trial_id", "status", "best_val_corr", "best_epoch", "epochs", *keys, "error"])
        for rank, r in enumerate(records, 1):
            writer.writerow([
                rank if r.ranked else "", r.trial_id, r.status, _cell(r.best_val_corr), _cell(r.best_epoch),
                r.epochs, *(_cell(r.params.get(k)) for k in keys), r.error or "",
            ])


def boundary_check(spec: SearchSpec, best: TrialRecord) -> list[str]:
    """Searched numeric parameters whose best value lies within EDGE of an end of its range (of the range under
    the options the best trial chose: a conditional parameter is checked only where the best trial has it)."""
    flagged = []
    for p in active_params(spec, best.params):
        value = best.params.get(p.key)
        if p.type == "categorical" or not isinstance(value, (int, float)):
            continue
        pos = _position(p, float(value))
        if pos <= EDGE or pos >= 1 - EDGE:
            end = "low" if pos <= EDGE else "high"
            flagged.append(f"`{p.key}` = {value:.4g} is at the {end} end of [{p.low:g}, {p.high:g}]: widen the range")
    return flagged


# ----------------------------------------------------------------------------------------- markdown
def _markdown(run_dir: Path, spec: SearchSpec, records: list[TrialRecord], importances: dict[str, float],
              note: str, figures: list[str], sections: list[str] = ()) -> str:
    counts = status_counts(records)
    ranked = [r for r in records if r.ranked]
    first = spec.first_params()
    n_sci = sum(p.role == "scientific" for p in first.values())
    lost = counts["failed"] + counts["error"]
    trials = (
        f"- trials: {len(records)} of {spec.settings.num_trials} requested: {counts['done']} ran to the end, "
        f"{counts['stopped']} stopped early (by ASHA or a budget), {counts['failed']} failed by themselves and "
        f"{counts['error']} lost to infrastructure failures ({lost / len(records):.0%} in all), "
        f"{counts['running'] + counts['pending']} unfinished; {counts['retries']} restarts from a checkpoint "
        f"after a lost worker or node (at most {spec.settings.max_retries} per trial)"
    )
    objective = (
        "- objective: best-epoch validation single-trial correlation (`best_val_corr`); ASHA compares "
        f"`{spec.settings.metric}` at {_rungs(spec)}; Optuna is told COMPLETE for a "
        "trial trained to its end, PRUNED for one stopped early"
    )
    params = f"- base config `{spec.base.name}`; {len(first)} searched parameters ({n_sci} scientific)"
    if spec.conditional():
        params += ", some only under some options (a conditional space: see results per option below)"
    lines = [f"# Search report: {run_dir.name}", "", trials, objective, params, ""]
    if not ranked:
        return "\n".join([*lines, "No trial finished with a score yet.", ""])
    best = ranked[0]
    headline = (
        f"`{best.trial_id}`: best val corr **{best.best_val_corr:.4f}** at epoch {best.best_epoch} "
        f"of {best.epochs} ({best.status})."
    )
    lines += ["## Best trial", "", headline, "", "| parameter | role | value |", "|---|---|---|"]
    lines += [f"| `{p.key}` | {p.role} | {_cell(best.params.get(p.key))} |" for p in active_params(spec, best.params)]
    lines += ["", f"## Top {min(TOP, len(ranked))} trials", ""]
    lines += ["| rank | trial | best val corr | best epoch | epochs | status |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {i} | `{r.trial_id}` | {r.best_val_corr:.4f} | {r.best_epoch} | {r.epochs} | {r.status} |"
        for i, r in enumerate(ranked[:TOP], 1)
    ]
    lines += family_section(spec, records)
    flagged = boundary_check(spec, best)
    lines += ["", "## Boundary check", ""]
    lines += [f"- {f}" for f in flagged] or [f"- no best value lies within {EDGE:.0%} of an end of its range."]
    lines += ["", "## Parameter importances (Optuna's default evaluator, PED-ANOVA, on the study's COMPLETE trials)",
              ""]
    if importances:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
    else:
        lines += [f"- not computed: {note}"]
    lines += ["", "## Memory per trial", "", _memory_line(records)]
    failed = [r for r in records if r.status in ("failed", "error")]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{r.trial_id}` ({'its own failure' if r.status == 'failed' else 'infrastructure, no retries left'}"
                  f"): {r.error}" for r in failed]
    lines += list(sections)
    lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def family_section(spec: SearchSpec, records: list[TrialRecord]) -> list[str]:
    """Results per option of every choice whose options carry their own parameters (e.g. per core family):
    trials, best and median best val corr, the best trial; nothing for a space without such choices."""
    ranked = [r for r in records if r.ranked]
    lines: list[str] = []
    for p, _ in spec.walk():
        if not p.branches:
            continue
        lines += ["", f"## Results per `{p.key}`", "",
                  "| option | trials | scored | best val corr | median | best trial | its own parameters |",
                  "|---|---|---|---|---|---|---|"]
        for b in p.branches:
            mine = [r for r in records if r.params.get(p.key) == b.value]
            scores = [r.best_val_corr for r in ranked if r in mine]
            best = next((r for r in ranked if r in mine), None)
            own = ", ".join(f"`{q.key}`" for q in b.params) or "-"
            cells = (f"{max(scores):.4f} | {statistics.median(scores):.4f} | `{best.trial_id}`" if best else "- | - | -")
            lines.append(f"| {b.value} | {len(mine)} | {len(scores)} | {cells} | {own} |")
    return lines


def _memory_line(records: list[TrialRecord]) -> str:
    rss = [row["rss_mb"] for r in records for row in r.curve[-1:] if "rss_mb" in row]
    private = [row["private_mb"] for r in records for row in r.curve[-1:] if "private_mb" in row]
    if not rss:
        return "- not measured (no /proc/self/smaps_rollup on the trial nodes)."
    return (
        f"- per trial process at its last epoch (median of {len(rss)}): RSS {statistics.median(rss):.0f} MB, "
        f"of which private {statistics.median(private):.0f} MB. The rest (torch libraries, the memory-mapped "
        "data cache) is shared by all trials on a node, so one more concurrent trial adds about the private part."
    )


def _rungs(spec: SearchSpec) -> str:
    """Where ASHA compares trials, in words: its rungs' epochs, or their training time in typical epochs."""
    a = spec.settings.asha
    rungs, t = [], float(a.grace_period)
    while t < a.max_t:
        rungs.append(int(t))
        t *= a.reduction_factor
    if a.rungs_in == "training_seconds":
        return (f"{', '.join(map(str, rungs))}, ... typical epochs of training time (the median first epoch's "
                "training seconds)")
    return f"epochs {', '.join(map(str, rungs or [a.max_t]))}"


# -------------------------------------------------------------------------------------------- plots
def _importances(run_dir: Path) -> tuple[dict[str, float], str]:
    import optuna

    from search.store.study import load_study

    try:
        study = load_study(run_dir)
        # Optuna's evaluators read COMPLETE trials only: those trained to their end, never mixing in the scores
        # of trials stopped after a few epochs (PRUNED)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < 2:
            return {}, f"needs at least 2 trials trained to their end (COMPLETE in the study), has {len(complete)}"
        if len(study.directions) == 1:
            return dict(optuna.importance.get_param_importances(study)), ""
        with warnings.catch_warnings():  # a cost-aware study: importances for a high val corr, its first value
            warnings.filterwarnings("ignore", message=".*low `target` values")  # hence the minus sign
            return dict(optuna.importance.get_param_importances(study, target=lambda t: -t.values[0])), ""
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as err:
        return {}, f"{type(err).__name__}: {err}"


def _plots(records: list[TrialRecord], spec: SearchSpec, importances: dict[str, float], run_dir: Path,
           out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    ranked = [r for r in records if r.ranked]
    # optimisation history, in the order Optuna saw the trials
    history = _history(run_dir, records)
    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        xs, ys, _ = zip(*history)
        best = [max(ys[: i + 1]) for i in range(len(ys))]
        for pruned, style, label in ((False, {"c": "C0"}, "trained to its end (COMPLETE)"),
                                     (True, {"facecolors": "none", "edgecolors": "C0"}, "stopped early (PRUNED)")):
            points = [(x, y) for x, y, p in history if p == pruned]
            if points:
                ax.scatter(*zip(*points), label=label, **style)
        ax.step(xs, best, where="post", color="C3", label="best so far")
        ax.set(xlabel="Optuna trial number", ylabel="best val corr", title="optimisation history")
        ax.legend()
        names.append(_save(fig, out / "history.png"))
    if importances:
        fig, ax = plt.subplots(figsize=(6, 0.4 * len(importances) + 1.2))
        keys = list(importances)[::-1]
        ax.barh(keys, [importances[k] for k in keys])
        ax.set(xlabel="importance (PED-ANOVA)", title="parameter importances")
        names.append(_save(fig, out / "importances.png"))
    for p in spec.first_params().values():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        pts = [(r.params[p.key], r.best_val_corr) for r in ranked if p.key in r.params]
        if p.type == "categorical":
            labels = [str(c) for c in p.choices]
            xs = [labels.index(str(v)) for v, _ in pts]
            ax.set_xticks(range(len(labels)), labels)
        else:
            xs = [float(v) for v, _ in pts]
            if p.type == "loguniform":
                ax.set_xscale("log")
            ax.axvspan(p.low, p.high, color="0.93", zorder=0)
        ax.scatter(xs, [s for _, s in pts], c="C0")
        ax.set(xlabel=p.key, ylabel="best val corr", title=f"{p.key} ({p.role})")
        names.append(_save(fig, out / f"param_{p.key}.png"))
    if ranked:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for r in ranked[:TOP]:
            rows = [row for row in r.curve if "val_corr" in row]
            ax.plot([row["epoch"] for row in rows], [row["val_corr"] for row in rows], marker=".",
                    label=f"{r.trial_id} ({r.best_val_corr:.3f})")
        ax.set(xlabel="epoch", ylabel="val corr", title=f"validation curves, top {min(TOP, len(ranked))}")
        ax.legend(fontsize=7)
        names.append(_save(fig, out / "curves.png"))
    return names


def _history(run_dir: Path, records: list[TrialRecord]) -> list[tuple[int, float, bool]]:
    """(Optuna trial number, best val corr, stopped early) of every finished trial of the study, imported ones
    too, in the order Optuna saw them: COMPLETE and PRUNED trials. The score is the study's
    (``study.trial_best``), else the Tune record's (a PRUNED trial of a two-objective study holds none)."""
    import optuna

    from search.store.study import TUNE_TRIAL_ID, load_study, trial_best

    try:
        study = load_study(run_dir)
    except (KeyError, FileNotFoundError):
        return []
    recorded = {r.trial_id: r.best_val_corr for r in records if r.ranked}
    pruned = optuna.trial.TrialState.PRUNED
    history = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, pruned)):
        score = trial_best(t)
        score = recorded.get(t.user_attrs.get(TUNE_TRIAL_ID, "")) if score is None else score
        if score is not None:
            history.append((t.number, score, t.state == pruned))
    return history


# ------------------------------------------------------------------- cost-aware search: the Pareto front
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (score, cost) ``points`` that no other point dominates (a score at least as high at a
    cost at most as high, one of them strictly), cheapest first; of equal points the first is kept.

    >>> pareto_front([(0.30, 5.0), (0.20, 2.0), (0.25, 6.0), (0.30, 4.0)])
    [1, 3]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front, best = [], -math.inf
    for i in order:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    return front


def pareto_section(spec: SearchSpec, records: list[TrialRecord], out: Path) -> tuple[list[str], list[str]]:
    """Markdown lines and figure names (``pareto.png``: best val corr vs cost, the front highlighted) of a
    cost-aware search; nothing for a one-objective search. The front is of this run's own trials."""
    if not spec.settings.with_cost:
        return [], []
    kind = spec.settings.cost
    unit = COSTS[kind][1]
    scored = [r for r in records if r.ranked and r.cost(kind) is not None]
    lines = ["", "## Pareto front: validation correlation vs cost", "",
             f"- objectives: best val corr (maximised) and the cost `{kind}` ({unit}, minimised); {len(scored)} of "
             "this run's trials have both (trials a warm start imported are not drawn)"]
    if not scored:
        return [*lines, "- no trial reported both yet."], []
    points = [(r.best_val_corr, r.cost(kind)) for r in scored]
    front = [scored[i] for i in pareto_front(points)]
    lines += ["", f"| trial | best val corr | {unit} | best epoch | epochs | status |", "|---|---|---|---|---|---|"]
    lines += [f"| `{r.trial_id}` | {r.best_val_corr:.4f} | {r.cost(kind):.4g} | {r.best_epoch} | {r.epochs} | "
              f"{r.status} |" for r in front]
    best, cheap = (pick_trial(records, pick, kind) for pick in (("best", 0.0), ("cheapest", DEFAULT_TOLERANCE)))
    lines += ["", f"- `export --pick best` takes `{best.trial_id}`; `export --pick cheapest:{DEFAULT_TOLERANCE:g}` "
              f"takes `{cheap.trial_id}` ({cheap.best_val_corr:.4f}, {cheap.cost(kind):.4g} {unit})."]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([c for _, c in points], [v for v, _ in points], c="0.6", label="trial")
    fx, fy = [r.cost(kind) for r in front], [r.best_val_corr for r in front]
    ax.step(fx, fy, where="post", color="C3", alpha=0.6)
    ax.scatter(fx, fy, c="C3", zorder=3, label="Pareto front")
    for r, x, y in zip(front, fx, fy):
        ax.annotate(r.trial_id, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if min(fx + [c for _, c in points]) > 0 and max(c for _, c in points) / min(c for _, c in points) > 20:
        ax.set_xscale("log")
    ax.set(xlabel=f"cost: {unit}", ylabel="best val corr", title="validation correlation vs cost")
    ax.legend(fontsize=8)
    return lines, [_save(fig, out / "pareto.png")]


def warm_start_section(run_dir: Path) -> list[str]:
    """Markdown lines on what a warm start imported (from study.json); nothing for a run without one."""
    import json

    from search.store.study import STUDY_FILE

    path = run_dir / STUDY_FILE
    info = json.loads(path.read_text()).get("warm_start") if path.is_file() else None
    if not info:
        return []
    left = sum(info["left_out"].values())
    why = ", ".join(f"{n} {reason}" for reason, n in info["left_out"].items())
    return ["", "## Warm start", "",
            f"- from `{info['from']}`: {info['imported']} of its {info['finished']} finished trials imported into the "
            f"study before any trial started, {left} left out" + (f" ({why}; e.g. {info['example']})" if left else ""),
            "- imported trials count in the optimisation history and the importances (the study's view), not in "
            "the tables of this run's trials above"]


def _save(fig: Any, path: Path) -> str:
    """Save ``fig`` to ``path`` (format from its suffix) whole or not at all, and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)  # also when saving failed: pyplot would keep the figure alive
    return path.name


def _position(p: Param, value: float) -> float:
    """Where ``value`` lies in [low, high] as a fraction (log scale for loguniform)."""
    lo, hi, v = float(p.low), float(p.high), value
    if p.type == "loguniform":
        lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, 1e-300))
    return (v - lo) / (hi - lo)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
