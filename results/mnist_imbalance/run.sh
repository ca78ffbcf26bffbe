#!/usr/bin/env bash
# Regenerates results/mnist_imbalance/: MNIST 4 vs 9 at 99.5% nines, 8,000 steps, L2RW and the
# uniform-weight baseline on the first three seeds of the original code ((t*123456789) % 100000).
# Two runs at a time with one TF thread each (2 cores). Rerunning skips finished runs and resumes
# interrupted ones. RUNS / OUT: where the runs and the summary go.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
RUNS=${RUNS:-runs/mnist_imbalance}
OUT=${OUT:-results/mnist_imbalance}
mkdir -p "$RUNS"
for method in l2rw baseline; do
  for seed in 0 56789 13578; do
    echo "$method $seed"
  done
done | xargs -P 2 -n 2 sh -c 'python -m l2rw_tf.main --flagfile=configs/mnist_imbalance.flags \
    --method=$0 --seed=$1 --logdir='"$RUNS"'/$0_seed$1 > '"$RUNS"'/$0_seed$1.log 2>&1 \
    && echo "done $0 seed $1" || { echo "FAILED $0 seed $1 (see '"$RUNS"'/$0_seed$1.log)"; exit 255; }'
python -m l2rw_tf.report "$RUNS" --out "$OUT"
