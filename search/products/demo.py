"""``sensorium-search demo``: the whole story on synthetic data, each stage timed.

1. synth    two synthetic scans (one competition scan) with a known ground truth and oracle
2. search   configs/search_demo.yaml: 12 trials, 2 at a time, TPE + ASHA (smoke: configs/search_tiny.yaml)
3. export   best_config.yaml of the best trial
4. retrain  the best config with several seeds, averaged into an ensemble, submissions scored
5. baseline the untuned reference config (configs/sensorium_plus.yaml; smoke: configs/tiny.yaml) trained
            once on the same scans under the same epoch cap, submitted and scored the same way
6. ensemble the search's own trials as a weighted ensemble (greedy selection with replacement on validation,
            each trial's best checkpoint predicting once), submitted and scored
7. report   trials.csv, report.md, plots

Everything lands under ``--out`` (default ``runs/demo``); ``demo.md`` holds the scores table and timings.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import yaml

from sensorium.atomic import write_text
from sensorium.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def run_demo(out: Path, *, trials: int | None = None, concurrent: int = 2, seeds: int = 2,
             time_budget: float | None = 420.0, smoke: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run all stages into ``out``; returns the summary written to ``out/demo.json``."""
    from search.products.ensemble import build_ensemble, format_steps
    from search.products.export import export_best, read_best_config
    from search.products.report import write_report
    from search.products.retrain import retrain
    from search.products.scoring import score_table
    from search.raytune.driver import ensure_ray, release_ray, run_search
    from search.spec.space import load_search, with_settings
    from search.store.results import compute_spent, status_counts
    from sensorium.config import load_config, save_config, set_value
    from sensorium.data.synth import SynthConfig, generate

    out = Path(out).resolve()
    run_dir = out / "search"
    if (run_dir / "tuner.pkl").exists():
        raise UserError(f"{out} already holds a demo; delete it or pass another --out")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str, start: float) -> None:
        seconds[name] = round(time.perf_counter() - start, 1)
        print(f"== {name} done in {seconds[name]:.0f} s", flush=True)

    print(f"== synth: {'tiny' if smoke else 'demo'} synthetic scans", flush=True)
    t = time.perf_counter()
    synth = generate(out / "synth", (SynthConfig.tiny if smoke else SynthConfig.demo)(seed), progress=not smoke)
    stage("synth", t)

    data = {"data.scans": [str(synth.data_dir)], "data.cache_dir": str(out / "cache")}
    spec_file = CONFIGS / ("search_tiny.yaml" if smoke else "search_demo.yaml")
    spec = _with_overrides(load_search(spec_file), data)
    spec = with_settings(spec, num_trials=trials, max_concurrent=concurrent, seed=seed, time_budget_s=time_budget)
    started = ensure_ray(None)
    try:
        print(f"== search: {spec_file.name}, {spec.settings.num_trials} trials, {concurrent} at a time", flush=True)
        t = time.perf_counter()
        records = run_search(spec, run_dir, progress=not smoke, live_every_s=30.0)
        stage("search", t)
    finally:
        release_ray(started)

    t = time.perf_counter()
    best_file = export_best(run_dir)
    provenance = read_best_config(best_file)[1]
    stage("export", t)

    print(f"== retrain: best config x {seeds} seeds", flush=True)
    t = time.perf_counter()
    tuned = retrain(best_file, out=run_dir / "retrain", seeds=seeds, progress=not smoke)
    stage("retrain", t)

    baseline_file = CONFIGS / ("tiny.yaml" if smoke else "sensorium_plus.yaml")
    cap = spec.base.train.max_epochs
    baseline_cfg = out / "baseline_config.yaml"
    base = load_config(baseline_file, [f"train.max_epochs={cap}"])
    for key, value in data.items():
        base = set_value(base, key, value)
    save_config(base, baseline_cfg)
    print(f"== baseline: {baseline_file.name} as is, but max_epochs capped at {cap} like the search", flush=True)
    t = time.perf_counter()
    baseline = retrain(baseline_cfg, out=out / "baseline", seeds=1, progress=not smoke)
    stage("baseline", t)

    print("== ensemble: greedy selection over the search's trials", flush=True)
    t = time.perf_counter()
    ensemble = build_ensemble(run_dir, retrain_dir=run_dir / "retrain", progress=not smoke)
    stage("ensemble", t)

    t = time.perf_counter()
    report_dir = write_report(run_dir)
    stage("report", t)
    seconds["total"] = round(time.perf_counter() - clock, 1)

    counts = status_counts(records)
    table = _table(tuned, baseline, ensemble)
    train_s, trial_epochs = compute_spent(records)
    budgets = {  # what each model cost: trial-epochs and training seconds (the search's summed over trials)
        "search": {"epochs": trial_epochs, "train_s": round(train_s, 1), "wall_budget_s": time_budget},
        **{name: {"epochs": sum(m["epochs"] for m in s["members"]), "seeds": len(s["members"]),
                  "seconds": round(sum(m["seconds"] for m in s["members"]), 1)}  # per seed: train + predict
           for name, s in (("retrain", tuned), ("baseline", baseline))},
        "ensemble": {"candidates": ensemble["candidates"], "members": len(ensemble["steps"]),
                     "trials": len(ensemble["members"]), "predicted": ensemble["predicted"],
                     "seconds": ensemble["seconds"]},
    }
    summary = {
        "smoke": smoke, "out": str(out), "search_run": str(run_dir), "search_file": f"configs/{spec_file.name}",
        "trials": {"requested": spec.settings.num_trials, "run": len(records), **counts},
        "best": {k: provenance[k] for k in ("trial_id", "best_val_corr", "best_epoch", "config_hash", "searched")},
        "epoch_cap": cap, "seeds": seeds, "budgets": budgets,
        "scores": {"tuned": tuned.get("scores"), "baseline": baseline.get("scores"), "trials": ensemble.get("scores")},
        "ensemble": {k: ensemble[k] for k in ("out", "val_corr", "best_trial", "steps", "members")},
        "oracle": tuned.get("oracle"), "seconds": seconds, "table": table, "report": str(report_dir / "report.md"),
    }
    summary["demo_md"] = str(out / "demo.md")
    write_text(out / "demo.json", json.dumps(summary, indent=2, default=str))
    write_text(out / "demo.md", _markdown(summary, score_table(tuned), format_steps(ensemble)))
    return summary


def _with_overrides(spec: Any, values: dict[str, Any]) -> Any:
    """``spec`` whose base config has the dotted ``values`` set (the demo's data and cache paths)."""
    import dataclasses

    from sensorium.config import set_value

    base = spec.base
    for key, value in values.items():
        base = set_value(base, key, value)
    return dataclasses.replace(spec, base=base)


def _table(tuned: dict[str, Any], baseline: dict[str, Any], ensemble: dict[str, Any]) -> str:
    """Live and final test scores of the competition scan(s): oracle, baseline, tuned models, the search's
    best trial and the ensemble of its trials."""
    rows: list[tuple[str, str, str, dict[str, float]]] = []
    for key, tiers in (tuned.get("oracle") or {}).items():
        for tier in ("test", "final_test"):
            if tier in tiers:
                rows.append(("oracle (noise-free truth)", key, tier, tiers[tier]))
    models = [("baseline, untuned (1 seed)", baseline, f"seed_{baseline['seeds'][0]}")]
    used = tuned.get("ensemble_seeds", tuned["seeds"])  # retrain leaves collapsed seeds out of its ensemble
    models += [(f"tuned, seed {s}" + ("" if s in used else " (left out)"), tuned, f"seed_{s}") for s in tuned["seeds"]]
    models += [(f"tuned, ensemble of {len(used)}", tuned, "ensemble")]
    models += [("best single trial", ensemble, "best_trial"),
               (f"trial ensemble of {len(ensemble['members'])} trials", ensemble, "trial_ensemble")]
    for label, summary, model in models:
        for key, tiers in ((summary.get("scores") or {}).get(model) or {}).items():
            for tier, scores in tiers.items():
                rows.append((label, key, tier, scores))
    lines = [f"{'model':<28}{'scan':<13}{'tier':<11}{'single-trial':>13}{'corr-to-avg':>13}{'FEVE':>9}"]
    for label, key, tier, s in sorted(rows, key=lambda r: (r[1], r[2] != "test")):
        feve = s.get("feve")
        feve_text = f"{feve:.4f}" if isinstance(feve, float) and math.isfinite(feve) else "-"
        lines.append(f"{label:<28}{key:<13}{tier:<11}{s['single_trial_correlation']:>13.4f}"
                     f"{s['correlation_to_average']:>13.4f}{feve_text:>9}")
    return "\n".join(lines)


def _markdown(summary: dict[str, Any], detail: str, steps: str) -> str:
    t, b = summary["trials"], summary["best"]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items() if k != "total")
    trials = (
        f"- search: {t['run']} of {t['requested']} trials ran: {t['done']} to the end, {t['stopped']} stopped "
        f"early (ASHA or the time budget), {t['failed'] + t['error']} failed ({summary['search_file']})"
    )
    g = summary["budgets"]
    wall = f" in a {g['search']['wall_budget_s']:.0f} s wall-clock budget" if g["search"]["wall_budget_s"] else ""
    cap = (
        f"- every model (search trials, retrain, baseline) is capped at {summary['epoch_cap']} epochs; the "
        "baseline is the reference config with only that cap and the data paths changed\n"
        f"- compute: the search {g['search']['epochs']} trial-epochs, {g['search']['train_s']:.0f} s of training"
        f"{wall}; the tuned ensemble {g['retrain']['seeds']} seeds, {g['retrain']['epochs']} epochs, "
        f"{g['retrain']['seconds']:.0f} s of seed tasks (training and prediction); the untuned baseline "
        f"{g['baseline']['seeds']} seed, {g['baseline']['epochs']} epochs, {g['baseline']['seconds']:.0f} s; "
        f"the trial ensemble {g['ensemble']['predicted']} of {g['ensemble']['candidates']} trials predicted once, "
        f"{g['ensemble']['seconds']:.0f} s"
    )
    e = summary["ensemble"]
    ensemble = (
        f"- trial ensemble: greedy forward selection with replacement over the search's {g['ensemble']['candidates']} "
        f"trials with a checkpoint, {g['ensemble']['members']} members ({g['ensemble']['trials']} distinct "
        f"trials), validation single-trial corr {e['val_corr']:.4f} vs {e['steps'][0]['val_corr']:.4f} for the best "
        f"single trial (`{e['best_trial']}`); details in {Path(e['out']).relative_to(summary['out'])}/ensemble.md"
    )
    return "\n".join([
        "# sensorium-search demo" + (" (smoke)" if summary["smoke"] else ""), "",
        trials,
        f"- best trial `{b['trial_id']}`: best val corr {b['best_val_corr']:.4f} at epoch {b['best_epoch']}",
        cap,
        ensemble,
        f"- wall time {summary['seconds']['total']:.0f} s ({timing})", "",
        "## Test scores of the competition scan (ground truth from the generator)", "",
        "```", summary["table"], "```", "",
        "## Every retrained model", "", "```", detail, "```", "",
        "## The trial ensemble, step by step (validation)", "", "```", steps, "```", "",
        f"Search report: {Path(summary['report']).relative_to(summary['out'])}", "",
        "```yaml", yaml.safe_dump({"searched": b["searched"]}, sort_keys=False).strip(), "```", "",
    ])
