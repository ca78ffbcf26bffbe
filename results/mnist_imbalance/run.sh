#!/usr/bin/env bash
# Regenerates results/mnist_imbalance/: MNIST 4 vs 9 at 99.5% nines, L2RW and the uniform-weight
# baseline on seeds of the original code ((t*123456789) % 100000). With no settings, as before:
# configs/mnist_imbalance.flags (8,000 steps), the first three seeds, six runs.
#
#   SET=paper     (default) configs/mnist_imbalance.flags: l2rw and baseline at 8,000 steps; run
#                 directories $RUNS/<method>_seed<seed>, RUNS=runs/mnist_imbalance,
#                 OUT=results/mnist_imbalance.
#   SET=original  configs/mnist_imbalance_original.flags (the original script's setting, AUDIT.md):
#                 l2rw at 4,000 and 8,000 steps, baseline at 8,000; run directories
#                 $RUNS/<method>_<steps>_seed<seed>, RUNS=runs/mnist_imbalance_original,
#                 OUT=results/mnist_imbalance/original.
#   NRUN          how many of the original's seeds (default 3: 0 56789 13578; 10 for its ten).
#   SEEDS         the seeds themselves (overrides NRUN), e.g. SEEDS="0 56789".
#   ARMS          method:steps pairs (default per SET, e.g. "l2rw:4000 l2rw:8000 baseline:8000").
#   PARALLEL      runs at a time (default 2), one TF thread each (2 cores).
#   EXTRA_FLAGS   appended to every command (a plumbing check: EXTRA_FLAGS=--num_steps=20 with a
#                 scratch RUNS and OUT).
#   DRY_RUN=1     print the commands, run nothing.
# Rerunning skips finished runs (result.json) and resumes interrupted ones. Then the report
# (summary.md / summary.csv / runs.csv in OUT) and, per run, the last step at which the test
# accuracy was exactly 50% (every 9 predicted; plateau.csv in OUT for SET=original) and, for
# SET=original, the per-step curves (curves.png / curves.csv).
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
SET=${SET:-paper}
case "$SET" in
  paper)
    FLAGFILE=configs/mnist_imbalance.flags
    ARMS=${ARMS:-"l2rw:8000 baseline:8000"}
    RUNS=${RUNS:-runs/mnist_imbalance}
    OUT=${OUT:-results/mnist_imbalance} ;;
  original)
    FLAGFILE=configs/mnist_imbalance_original.flags
    ARMS=${ARMS:-"l2rw:4000 l2rw:8000 baseline:8000"}
    RUNS=${RUNS:-runs/mnist_imbalance_original}
    OUT=${OUT:-results/mnist_imbalance/original} ;;
  *) echo "SET must be paper or original, not '$SET'" >&2; exit 2 ;;
esac
NRUN=${NRUN:-3}
SEEDS=${SEEDS:-$(python -c "print(' '.join(str(t * 123456789 % 100000) for t in range($NRUN)))")}
PARALLEL=${PARALLEL:-2}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
export SET FLAGFILE RUNS EXTRA_FLAGS DRY_RUN
mkdir -p "$RUNS"

# One line per run: <run name> <method> <steps> <seed>. The paper set keeps its old names (and
# its old commands: no --num_steps, the flagfile's 8,000).
for arm in $ARMS; do
  method=${arm%%:*} steps=${arm#*:}
  for seed in $SEEDS; do
    if [ "$SET" = paper ]; then name=${method}_seed$seed; else name=${method}_${steps}_seed$seed; fi
    if [ -f "$RUNS/$name/result.json" ] && [ -z "${DRY_RUN:-}" ]; then
      echo "finished already: $RUNS/$name" >&2
      continue
    fi
    echo "$name $method $steps $seed"
  done
done | xargs -r -P "$PARALLEL" -n 4 sh -c '
  name=$0 method=$1 steps=$2 seed=$3
  steps_flag=; [ "$SET" = paper ] || steps_flag=--num_steps=$steps
  set -- python -m l2rw_tf.main --flagfile="$FLAGFILE" --method="$method" --seed="$seed" \
    $steps_flag --logdir="$RUNS/$name" $EXTRA_FLAGS
  if [ -n "${DRY_RUN:-}" ]; then echo "$*"; exit 0; fi
  "$@" > "$RUNS/$name.log" 2>&1 && echo "done $name" \
    || { echo "FAILED $name (see $RUNS/$name.log)"; exit 255; }'
[ -n "${DRY_RUN:-}" ] && exit 0

python -m l2rw_tf.report "$RUNS" --out "$OUT"
PLATEAU=$([ "$SET" = original ] && echo "$OUT/plateau.csv" || echo "") RUNS="$RUNS" python - <<'EOF'
# Per run: the last evaluated step at which the test accuracy was exactly 0.5 (None: never), the
# first step after it, and the final test accuracy.
import csv, glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(os.environ["RUNS"], "*", "metrics.csv"))):
    run_dir = os.path.dirname(path)
    if not os.path.exists(os.path.join(run_dir, "result.json")):
        continue
    with open(os.path.join(run_dir, "flags.json")) as f:
        run = json.load(f)
    with open(path) as f:
        metrics = [(int(r["step"]), float(r["test_accuracy"])) for r in csv.DictReader(f)]
    at_half = [step for step, acc in metrics if acc == 0.5]
    rows.append({"run": os.path.basename(run_dir), "method": run["method"], "seed": run["seed"],
                 "num_steps": run["num_steps"], "last_step_at_50": at_half[-1] if at_half else "",
                 "final_test_accuracy": metrics[-1][1]})
if rows:
    out = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
    out.writeheader(); out.writerows(rows)
    if os.environ.get("PLATEAU"):
        with open(os.environ["PLATEAU"], "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(rows[0]))
            out.writeheader(); out.writerows(rows)
EOF
# SET=original: the per-step test accuracy of each arm, mean ± std over its seeds (curves.png and
# curves.csv in OUT).
if [ "$SET" = original ]; then
  OUT="$OUT" RUNS="$RUNS" python - <<'EOF2'
import glob, os
from l2rw_tf import plots
runs, out = os.environ["RUNS"], os.environ["OUT"]
groups = {label: sorted(d for d in glob.glob(os.path.join(runs, pattern)) if os.path.isdir(d))
          for label, pattern in [("L2RW, 4,000 steps", "l2rw_4000_seed*"),
                                 ("L2RW, 8,000 steps", "l2rw_8000_seed*"),
                                 ("Baseline, 8,000 steps", "baseline_8000_seed*")]}
groups = {label: dirs for label, dirs in groups.items() if dirs}
if groups:
    plots.curves_figure(groups, os.path.join(out, "curves.png"),
                        title="MNIST 4 vs 9, 99.5% nines (the original script's setting)")
EOF2
fi
