#!/usr/bin/env bash
# One bench_amgp comparison as one process per (model, method), side by side on one GPU, then merged.
#
# Every method's grid advances at once, so a device call cut short leaves each method with the same
# seeds, and the results are those of the runs made one after another: a deterministic run
# (--deterministic) does not depend on what else runs on the card (checked on an H100: DLRM dense
# seed 0 gave 0.8044774853601578 beside seven other runs and alone, docs/benchmarks.md). It is not
# faster: on that H100 the card was at 100% and eight parallel runs took about as long as eight in a
# row. Wall-clock fields of parallel runs are not a speed measurement. Rows are generated once, first.
#
#   tools/bench_amgp_parallel.sh OUT "MODELS" "METHODS" [bench_amgp args...]
#
# Each part resumes from $PARTS/<model>_<method>.grid.json, seeded on its first call from $SEED_GRID
# (earlier calls' runs, e.g. docs/results/amgp_train_dlrm_det.grid.json), so repeating the command on
# a warm machine continues where the last call stopped. OUT gets the merged table and grid
# (bench_amgp --merge-from ... --budget-s 0); the parts' logs are in $PARTS. With DEADLINE (epoch
# seconds) set, the parts stop in time for the merge.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: tools/bench_amgp_parallel.sh OUT \"MODELS\" \"METHODS\" [bench_amgp args...]" >&2
  exit 2
fi
out=$1; models=$2; methods=$3; shift 3
PARTS=${PARTS:-/tmp/amgp-parts}
SEED_GRID=${SEED_GRID:-}
PY=${PYTHON:-python3}
mkdir -p "$PARTS"
# the rows (and the drifted rows of the recurring stage), once: every part reads them from --rows-cache
"$PY" - "$@" <<'PY' || exit 3
import sys
sys.path.insert(0, "tools")
import bench_amgp
args = bench_amgp.parse_args(sys.argv[1:] + ["--device", "cpu"])  # rows only: the cache does not depend on it
steps = max(1, args.samples // args.batch_size) * args.passes
if not args.rows_cache:
    sys.exit("bench_amgp_parallel: error: no --rows-cache. Give one (e.g. --rows-cache /tmp/amgp-rows): the parts "
             "read the rows made here once instead of each generating them.")
bench_amgp.prepare_data(args, steps, print)
bench_amgp.prepare_recurring(args, print)
PY
# DEADLINE (epoch seconds): no part starts a run that would end past it, and none outlives it, so the
# merge below still runs inside the device call
budget=(); limit=()
if [ -n "${DEADLINE:-}" ]; then
  left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -gt 10 ] || { echo "bench_amgp_parallel: no time left before DEADLINE" >&2; exit 4; }
  budget=(--budget-s "$left"); limit=(timeout "$left")
fi
pids=(); parts=()
for model in $models; do
  for method in $methods; do
    part="$PARTS/${model}_${method}"
    parts+=("$part")
    if [ ! -f "$part.grid.json" ] && [ -n "$SEED_GRID" ] && [ -f "$SEED_GRID" ]; then
      cp "$SEED_GRID" "$part.grid.json"
    fi
    # two CPU threads a part unless the arguments say otherwise (later arguments win)
    OMP_NUM_THREADS=2 "${limit[@]}" "$PY" tools/bench_amgp.py --threads 2 --workers 1 "$@" "${budget[@]}" \
      --models "$model" --methods "$method" --out "$part.json" --resume >"$part.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
grids=()
for part in "${parts[@]}"; do
  grep -h "seed [0-9]*: auc\|budget: skipping\|error" "$part.log"
  [ -f "$part.grid.json" ] && grids+=("$part.grid.json")
done
# shellcheck disable=SC2086
"$PY" tools/bench_amgp.py "$@" --models $models --methods $methods --out "$out" --merge-from "${grids[@]}" \
  --budget-s 0 || status=$?
exit $status
