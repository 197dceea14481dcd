#!/usr/bin/env bash
# Run a search on an existing Ray cluster, then export the best config and write the report.
# If RUN_DIR already holds a search (a requeued SLURM job, a restarted head node), it is resumed instead:
# completed trials are kept, unfinished ones continue from their checkpoints.
#
#   cluster/search.sh ADDRESS SEARCH.yaml RUN_DIR [sensorium-search run options ...]
#
# ADDRESS: HOST:PORT of the cluster's head (or "auto" on a node of a cluster started with default paths).
# RUN_DIR must be on storage every node mounts. RETRAIN_SEEDS=N (default 0: skip) also retrains the best
# config with N seeds on this node and writes the submission files to RUN_DIR/retrain/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
    echo "usage: cluster/search.sh ADDRESS SEARCH.yaml RUN_DIR [run options ...]" >&2
    exit 2
fi
address=$1 search_file=$2 run_dir=$3
shift 3
cli=.venv/bin/sensorium-search

# The driver runs in the background so that a TERM or INT sent to this script (SLURM sends TERM before a
# job's time limit with --signal=B:TERM@120, scancel --signal=TERM --batch) reaches it: it then stops the
# search cleanly, keeps every checkpoint and exits with 130, and the next job with this RUN_DIR resumes.
driver() {
    "$cli" "$@" &
    local pid=$! status=0
    trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || status=$?; done  # a trap ends one wait early
    trap - TERM INT
    return "$status"
}

status=0
if [ -f "$run_dir/tuner.pkl" ]; then
    echo "search.sh: $run_dir holds a search: resuming it"
    driver resume "$run_dir" --address "$address" --quiet || status=$?
else
    driver run "$search_file" --address "$address" --out "$run_dir" --quiet "$@" || status=$?
fi
if [ "$status" -eq 130 ]; then
    echo "search.sh: search stopped by a signal, checkpoints kept; a job with RUN_DIR=$run_dir resumes it" >&2
    exit 130
fi
[ "$status" -eq 0 ] || exit "$status"
"$cli" export "$run_dir"
"$cli" report "$run_dir"
if [ "${RETRAIN_SEEDS:-0}" -gt 0 ]; then
    "$cli" retrain "$run_dir" --seeds "$RETRAIN_SEEDS" --quiet --force
fi
echo "search.sh: results in $run_dir (best_config.yaml, trials.csv, report; TensorBoard: tensorboard --logdir $run_dir --host 127.0.0.1)"
