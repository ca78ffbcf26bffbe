#!/usr/bin/env bash
# Regenerates results/label_issues/: L2RW's mislabel ranking (one training run) against cleanlab's
# (5-fold cross-validated probabilities of the same model trained as the baseline), issue 16.
# Needs the optional extra: pip install -e ".[eval]". One TF thread per process (2 cores).
#
#   MNIST BackgroundFlip 40%: the runs of results/mnist_background (seed 0);
#   MNIST UniformFlip 40%:    the same flagfile with --noise=uniform, trained here (seed 0);
#   CIFAR-10 (JPEG copy) BackgroundFlip 40%: the runs of results/cifar10_jpeg (seed 0).
# Finished runs and folds are reused; interrupted ones resume. SETTINGS="mnist_uniform" (say)
# runs a subset.
set -euo pipefail
cd "$(dirname "$0")/../.."
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
SETTINGS=${SETTINGS:-"mnist_background mnist_uniform cifar10_background"}
OUT=results/label_issues
for setting in $SETTINGS; do
  case "$setting" in
    mnist_background) runs=runs/mnist_background ;;
    mnist_uniform)
      runs=runs/label_issues/mnist_uniform
      for method in l2rw baseline; do
        python -m l2rw_tf.main --flagfile=configs/mnist_background_lenet_cpu.flags --noise=uniform \
          --method=$method --seed=0 --logdir=$runs/${method}_seed0
      done ;;
    cifar10_background) runs=runs/cifar10_jpeg/cifar10_background ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac
  python -m l2rw_tf.cleanlab_eval --l2rw_run=$runs/l2rw_seed0 --baseline_run=$runs/baseline_seed0 \
    --folds=5 --out=$OUT/$setting --overwrite
done
