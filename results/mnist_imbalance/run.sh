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
#   RATIOS        proportions of nines (default 0.995; the Fig. 2 sweep: "0.9 0.95 0.98 0.99").
#                 A run at another proportion than 0.995 is named <name>_p<ratio>_seed<seed>.
#   TRAIN_SEEDS   --train_seed values (default none: --seed seeds everything). With the same
#                 --seed, each redraws the initial weights and the batch order but keeps the
#                 split, as the original code does on every run; runs named <name>_seed<seed>_t<t>.
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

# One line per run: <run name> <method> <steps> <seed> <extra flags, comma-separated or "-">.
# Seed by seed, so that a sweep stopped early holds whole seeds. The paper set keeps its old
# names (and its old commands: no --num_steps, the flagfile's 8,000).
RATIOS=${RATIOS:-0.995}
TRAIN_SEEDS=${TRAIN_SEEDS:--}
for seed in $SEEDS; do
  for train_seed in $TRAIN_SEEDS; do
    for ratio in $RATIOS; do
      for arm in $ARMS; do
        method=${arm%%:*} steps=${arm#*:} extra=
        if [ "$SET" = paper ]; then name=$method; else name=${method}_$steps; fi
        if [ "$ratio" != 0.995 ]; then name=${name}_p$ratio extra=--pos_ratio=$ratio; fi
        name=${name}_seed$seed
        if [ "$train_seed" != - ]; then
          name=${name}_t$train_seed extra=${extra:+$extra,}--train_seed=$train_seed
        fi
        if [ -f "$RUNS/$name/result.json" ] && [ -z "${DRY_RUN:-}" ]; then
          echo "finished already: $RUNS/$name" >&2
          continue
        fi
        echo "$name $method $steps $seed ${extra:--}"
      done
    done
  done
done | xargs -r -P "$PARALLEL" -n 5 sh -c '
  name=$0 method=$1 steps=$2 seed=$3 extra=$4
  steps_flag=; [ "$SET" = paper ] || steps_flag=--num_steps=$steps
  [ "$extra" = - ] && extra= || extra=$(echo "$extra" | tr , " ")
  set -- python -m l2rw_tf.main --flagfile="$FLAGFILE" --method="$method" --seed="$seed" \
    $steps_flag $extra --logdir="$RUNS/$name" $EXTRA_FLAGS
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
# SET=original: the per-step test accuracy of each arm at 99.5% nines, mean ± std over its seeds
# (curves.png and curves.csv in OUT); with runs at other proportions too, paper Fig. 2 from the
# original's arms, L2RW 4,000 steps and baseline 8,000 (mnist_imbalance.png / .csv in OUT).
if [ "$SET" = original ]; then
  OUT="$OUT" RUNS="$RUNS" python - <<'EOF2'
import glob, json, os, re
from l2rw_tf import plots
runs, out = os.environ["RUNS"], os.environ["OUT"]
def arm(pattern):  # run directories named exactly <arm>_seed<seed>
    return sorted(d for d in glob.glob(os.path.join(runs, "*"))
                  if os.path.isdir(d) and re.fullmatch(pattern + r"_seed\d+", os.path.basename(d)))
groups = {label: arm(pattern)
          for label, pattern in [("L2RW, 4,000 steps", "l2rw_4000"),
                                 ("L2RW, 8,000 steps", "l2rw_8000"),
                                 ("Baseline, 8,000 steps", "baseline_8000")]}
groups = {label: dirs for label, dirs in groups.items() if dirs}
if groups:
    plots.curves_figure(groups, os.path.join(out, "curves.png"),
                        title="MNIST 4 vs 9, 99.5% nines (the original script's setting)")
sweep = [d for pattern in (r"l2rw_4000(_p[0-9.]+)?", r"baseline_8000(_p[0-9.]+)?")
         for d in arm(pattern)]
if len({plots.load_run(d)["flags"]["pos_ratio"] for d in sweep}) > 1:
    rows = plots.imbalance_figure(sweep, out)
    seeds = sorted({r["n_seeds"] for r in rows})
    plots.imbalance_figure(sweep, out, title="MNIST 4 vs 9, the original's setting "
                           f"(mean ± std, {'–'.join(map(str, (seeds[0], seeds[-1])))} seeds)"
                           if len(seeds) > 1 else None)
    print("\n".join(json.dumps(r) for r in rows))
EOF2
fi
