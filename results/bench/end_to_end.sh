#!/usr/bin/env bash
# End-to-end cost of L2RW: the MNIST 4-vs-9 run at 99.5% nines (configs/mnist_imbalance.flags,
# 8,000 steps, seed 0) with the uniform-weight baseline and with L2RW, one after the other, each
# alone on the machine with every core. Writes $OUT.{json,md} (default results/bench/end_to_end;
# an existing file there is an error, not overwritten): each run's
# wall time (whole process, start-up included) and where its training time went (input waiting,
# steps, evaluation, checkpoints: the time breakdown of result.json), and the L2RW/baseline ratio.
# Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_CPP_MIN_LOG_LEVEL=2
RUNS=${RUNS:-runs/bench_end_to_end}
OUT=${OUT:-results/bench/end_to_end}
if [[ -e $RUNS ]]; then
  echo "error: $RUNS exists; remove it (or set RUNS=...) for a fresh timing" >&2
  exit 2
fi
if [[ -e $OUT.json || -e $OUT.md ]]; then
  echo "error: $OUT.json or $OUT.md exists; remove it (or set OUT=...)" >&2
  exit 2
fi
mkdir -p "$RUNS"
for method in baseline l2rw; do
  start=$(date +%s.%N)
  python -m l2rw_tf.main --flagfile=configs/mnist_imbalance.flags --method="$method" --seed=0 \
    --logdir="$RUNS/$method" > "$RUNS/$method.log" 2>&1 \
    || { echo "error: the $method run failed, see $RUNS/$method.log" >&2; exit 1; }
  echo "$method $(python -c "print(round($(date +%s.%N) - $start, 1))")" >> "$RUNS/wall_seconds.txt"
  echo "$method: $(tail -n 1 "$RUNS/wall_seconds.txt" | cut -d' ' -f2) s"
done
python - "$RUNS" "$OUT" <<'PY'
import json, os, sys
runs, out_path = sys.argv[1:]
wall = dict(line.split() for line in open(os.path.join(runs, "wall_seconds.txt")))
parts = ("input_seconds", "step_seconds", "eval_seconds", "checkpoint_seconds")
table = {}
for method in ("baseline", "l2rw"):
    result = json.load(open(os.path.join(runs, method, "result.json")))
    table[method] = {"wall_seconds": float(wall[method]), "test_accuracy": result["test_accuracy"],
                     "train_seconds": result["train_seconds"], **{p: result[p] for p in parts},
                     "runtime": result["runtime"]}  # TF version and kernels, as the run recorded
ratio = table["l2rw"]["wall_seconds"] / table["baseline"]["wall_seconds"]
out = {"command": "bash results/bench/end_to_end.sh", "runs": table,
       "wall_ratio_l2rw_to_baseline": ratio, "cpu_count": os.cpu_count()}
json.dump(out, open(out_path + ".json", "w"), indent=2)
lines = ["| method | wall s | train s | input | steps | evaluation | checkpoints | test acc |",
         "|---|---|---|---|---|---|---|---|"]
for method, r in table.items():
    share = lambda p: f"{r[p]:.1f} s ({100 * r[p] / r['train_seconds']:.1f}%)"
    lines.append(f"| {method} | {r['wall_seconds']:.1f} | {r['train_seconds']:.1f} | "
                 + " | ".join(share(p) for p in parts) + f" | {r['test_accuracy']:.3f} |")
lines.append(f"\nL2RW / baseline wall time: {ratio:.2f}x")
open(out_path + ".md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
