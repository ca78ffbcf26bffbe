#!/usr/bin/env bash
# Issue 23's practitioner benchmark: L2RWModel with its defaults against plain `model.fit` and
# against training on the clean set alone (same initial weights, batches, optimizer and steps:
# examples/harness.py), on four models a practitioner brings, with clean labels and three kinds
# of noise, 5 seeds (3 for the CIFAR ResNet: ~8 minutes a seed on 2 cores).
#
#   bash results/practitioner/run.sh                       # everything missing, then the table
#   MODELS="tabular_mlp" NOISES="none uniform40" bash results/practitioner/run.sh   # a subset
#
# Each (model, noise, seed) is one process (examples/<model>.py --seeds=<seed>), its whole output
# in runs/practitioner/<cell>/ and its results.json copied to results/practitioner/cells/<cell>.json
# when it finishes: a cell with that file is done and skipped, so an interrupted run resumes at
# the first missing cell. Run it alone on the machine (the times go into the table).
set -euo pipefail
cd "$(dirname "$0")/../.."
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/tensorflow_datasets}"
export TF_CPP_MIN_LOG_LEVEL=2
MODELS=${MODELS:-"tabular_mlp digits_tokens mnist_cnn cifar_resnet"}
NOISES=${NOISES:-"none uniform20 uniform40 background40"}
SEEDS=${SEEDS:-"0 1 2 3 4"}
CIFAR_SEEDS=${CIFAR_SEEDS:-"0 1 2"}
CELLS=results/practitioner/cells
mkdir -p "$CELLS"
for model in $MODELS; do
  seeds=$SEEDS
  [ "$model" = cifar_resnet ] && seeds=$CIFAR_SEEDS
  for noise in $NOISES; do
    case "$noise" in
      none) args="--noise=none" ;;
      uniform20) args="--noise=uniform --ratio=0.2" ;;
      uniform40) args="--noise=uniform --ratio=0.4" ;;
      background40) args="--noise=background --ratio=0.4" ;;
      *) echo "unknown noise setting $noise" >&2; exit 2 ;;
    esac
    for seed in $seeds; do
      cell=${model}_${noise}_s${seed}
      [ -f "$CELLS/$cell.json" ] && continue
      echo "== $cell ($(date -u +%H:%M:%S))"
      # shellcheck disable=SC2086
      python "examples/$model.py" $args --seeds="$seed" --out="runs/practitioner/$cell" --overwrite
      cp "runs/practitioner/$cell/results.json" "$CELLS/$cell.json"
    done
  done
done
python results/practitioner/table.py
