"""``sensorium-search``: one console script, one subcommand per step of the data flow.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``; its
one-line help is in ``COMMANDS``. Modules are imported only when their command runs, so ``--help`` stays fast and a
data-only command never imports Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sensorium.errors import SearchInterrupted, UserError

# name -> (module, its one help line); the order is the data flow, and the order --help lists them in. The
# help lines live only here, so the list and each command's own --help say the same without importing every
# command's module.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("sensorium.data.synth.command",
              "write synthetic scans in the official SENSORIUM file tree, with their ground truth"),
    "inspect": ("sensorium.data.inspect",
                "summarise scans: a table (neurons, trials per tier, repeats, behaviour) and PNG figures"),
    "train": ("sensorium.training.command", "train one model from an experiment config into a run directory"),
    "submit": ("sensorium.submit", "write the competition CSVs of a trained run for every competition scan"),
    "evaluate": ("sensorium.evaluate",
                 "score a submission CSV against a ground-truth CSV (single-trial corr, corr to average, FEVE)"),
    "run": ("search.cli.run", "run a Ray Tune + Optuna hyperparameter search from a search file"),
    "resume": ("search.cli.resume",
               "continue a search whose driver stopped: completed trials are kept, unfinished ones resume"),
    "export": ("search.cli.export",
               "write best_config.yaml (full config of the best, or cheapest near-best, trial + provenance)"),
    "retrain": ("search.cli.retrain", "retrain the best config with several seeds, ensemble, write and score submissions"),
    "ensemble": ("search.cli.ensemble",
                 "a weighted ensemble of the search's trials by greedy selection on validation, submitted and scored"),
    "report": ("search.cli.report", "trials.csv, a markdown summary and plots of a search"),
    "demo": ("search.cli.demo",
             "the whole story on synthetic data: synth, search, export, retrain, ensemble, submission, report"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensorium-search",
        description="Find the best SENSORIUM+ model of mouse V1: train, search, export, retrain, submit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, text) in COMMANDS.items():
        if name == wanted:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=text, description=text)
            module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            sub.add_parser(name, help=text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SearchInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
