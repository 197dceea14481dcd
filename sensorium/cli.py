"""``sensorium-search``: one console script, one subcommand per step of the data flow.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``--help`` stays fast and a
data-only command never imports Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sensorium.errors import SearchInterrupted, UserError

# name -> module; the order is the data flow, and the order --help lists them in.
COMMANDS: dict[str, str] = {
    "synth": "sensorium.data.synth.command",
    "inspect": "sensorium.data.inspect",
    "train": "sensorium.training.command",
    "submit": "sensorium.predict",
    "evaluate": "sensorium.evaluate",
    "run": "search.run",
    "resume": "search.resume",
    "export": "search.export",
    "retrain": "search.retrain",
    "report": "search.report",
    "demo": "search.demo",
}

_SUMMARIES: dict[str, str] = {
    "synth": "write synthetic scans in the official SENSORIUM file tree, with their ground truth",
    "inspect": "summarise scans (table + PNG figures)",
    "train": "train one model from an experiment config into a run directory",
    "submit": "write the competition CSVs of a trained run for every competition scan",
    "evaluate": "score a submission CSV against a ground-truth CSV",
    "run": "run a Ray Tune + Optuna hyperparameter search from a search file",
    "resume": "continue a search whose driver stopped",
    "export": "write best_config.yaml of a search",
    "retrain": "retrain the best config with several seeds, ensemble, write and score submissions",
    "report": "trials.csv, a markdown summary and plots of a search",
    "demo": "the whole story on synthetic data: synth, search, export, retrain, submission, report",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensorium-search",
        description="Find the best SENSORIUM+ model of mouse V1: train, search, export, retrain, submit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name in COMMANDS.items():
        if name == wanted:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
            p.set_defaults(_module=module)
        else:
            sub.add_parser(name, help=_SUMMARIES[name])
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
