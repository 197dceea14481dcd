"""Every bad input of scripts/bad_inputs.py, run through the real CLI: a one-line error naming the culprit.

The cases run once per session (as subprocesses, two at a time); each test checks one case's refusal.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script() -> ModuleType:
    """scripts/bad_inputs.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "scripts" / "bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


bad_inputs = _load_script()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """The outcome of every case, by title."""
    work = tmp_path_factory.mktemp("bad_inputs")
    return {o.case.title: o for o in bad_inputs.run_all(work, jobs=2)}


@pytest.mark.parametrize("title", [case.title for case in bad_inputs.CASES])
def test_bad_input_is_refused_in_one_line_naming_the_culprit(outcomes, title):
    o = outcomes[title]
    report = f"{o.command}\nexit {o.returncode}\nstdout:\n{o.stdout}\nstderr:\n{o.stderr}"
    assert o.returncode == 2, report
    assert "Traceback" not in o.stderr + o.stdout, report
    lines = o.stderr.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), report
    assert o.invocation.names in o.message, report
    assert o.created == [], f"{report}\nwritten although refused: {o.created}"


def test_committed_table_lists_every_case_with_its_command(outcomes):
    page = (ROOT / "results" / "bad_inputs.md").read_text()
    for o in outcomes.values():
        assert f"| {o.case.title} | `{bad_inputs.cell(o.command)}` | 2 |" in page, (
            f"results/bad_inputs.md is out of date for {o.case.title!r}: run .venv/bin/python scripts/bad_inputs.py"
        )
