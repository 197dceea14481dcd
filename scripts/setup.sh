#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the tested versions in constraints.txt.
# torch is pinned first: on this CPU machine pip takes the CPU build from local disk; on a GPU machine
# the same pin installs PyPI's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
