#!/usr/bin/env bash
# The main job: set up, then run the whole demo on synthetic data (see README "Main job").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sensorium-search demo --out runs/demo "$@"
