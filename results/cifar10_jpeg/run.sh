#!/usr/bin/env bash
# Regenerates results/cifar10_jpeg/: CIFAR-10 (JPEG copy, ../shared/datasets/cifar10_jpeg),
# BackgroundFlip 40% and UniformFlip 40%, at CPU scale (configs/cifar10_background_resnet32_cpu
# and configs/cifar10_uniform_wrn28_10_cpu.flags: a width-0.5 one-unit-per-stage ResNet on a
# 2,000-image noisy subset, 1,000 steps), L2RW and baseline on seeds 0, 6, 28. These are the same
# run directories run_experiments.sh --scale=cpu uses (RUNS, default runs/cpu), so either script
# reuses the other's runs. One TF thread per run, PARALLEL runs at a time (default 2). Rerunning
# skips finished runs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
RUNS=${RUNS:-runs/cpu}
OUT=results/cifar10_jpeg
for experiment in cifar10_background:cifar10_background_resnet32_cpu \
                  cifar10_uniform:cifar10_uniform_wrn28_10_cpu; do
  for seed in 0 6 28; do
    for method in baseline l2rw; do
      echo "${experiment%%:*} ${experiment#*:} $method $seed"
    done
  done
done | xargs -P "${PARALLEL:-2}" -n 4 sh -c 'mkdir -p '"$RUNS"'/$0 && python -m l2rw_tf.main \
    --flagfile=configs/$1.flags --method=$2 --seed=$3 --logdir='"$RUNS"'/$0/$2_seed$3 \
    >> '"$RUNS"'/$0/$2_seed$3.log 2>&1 && echo "done $0 $2 seed $3" \
    || { echo "FAILED $0 $2 seed $3 (see '"$RUNS"'/$0/$2_seed$3.log)"; exit 255; }'
for noise in background uniform; do
  python -m l2rw_tf.report "$RUNS/cifar10_$noise" --out "$OUT/$noise"
done
# Figures (accuracy curves, weight histograms, the mislabel ranking) and the table of these two
# experiments only: plots.py reads them through runs/cifar10_jpeg/, a folder of links.
mkdir -p runs/cifar10_jpeg
for noise in background uniform; do ln -sfn "$(cd "$RUNS" && pwd)/cifar10_$noise" runs/cifar10_jpeg/; done
python -m l2rw_tf.plots --runs=runs/cifar10_jpeg --out="$OUT/figures" --scale=cpu
