#!/usr/bin/env bash
# Regenerates results/mnist_background/: MNIST BackgroundFlip 40% (10 classes, LeNet, 100 clean
# images), the CPU-scale config (1,500 steps), L2RW and baseline on seeds 0, 6, 28 (background
# classes 3, 0, 7). One TF thread per run, PARALLEL runs at a time (default 1). Rerunning skips
# finished runs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
RUNS=${RUNS:-runs/mnist_background}
mkdir -p "$RUNS"
for seed in 0 6 28; do
  for method in l2rw baseline; do
    echo "$method $seed"
  done
done | xargs -P "${PARALLEL:-1}" -n 2 sh -c 'python -m l2rw_tf.main \
    --flagfile=configs/mnist_background_lenet_cpu.flags --method=$0 --seed=$1 \
    --logdir='"$RUNS"'/$0_seed$1 > '"$RUNS"'/$0_seed$1.log 2>&1 \
    && echo "done $0 seed $1" || { echo "FAILED $0 seed $1 (see '"$RUNS"'/$0_seed$1.log)"; exit 255; }'
python -m l2rw_tf.report "$RUNS" --out results/mnist_background
