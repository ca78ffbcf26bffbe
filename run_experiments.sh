#!/usr/bin/env bash
# Regenerates every figure and table of the paper and of the report: trains the runs one after
# another, then draws them with `python -m l2rw_tf.plots`.
#
#   bash run_experiments.sh --jobs=2            # --scale=cpu: reduced settings, ~2 h on 2 cores
#   bash run_experiments.sh --scale=paper       # the paper's settings (reference.md), for a GPU
#   bash run_experiments.sh --scale=paper --dry_run    # only print every run's command line
#
# Options: --scale=cpu|paper (default cpu), --dry_run, --runs DIR (default runs/<scale>),
# --out DIR (default results/<scale>), --jobs N (default 1): train N runs at once, each with
# (cores / N) TensorFlow threads and its output in its own log only (on 2 cores, --jobs=2 trains
# the small CPU-scale networks about 1.3x faster than one run using both cores).
#
# Runs go to RUNS/<experiment>/<run>/, the layout l2rw_tf/plots.py reads. Rerunning the script is
# safe: the CLI reports a finished run directory instead of rerunning it and resumes an
# interrupted one from its last checkpoint. Every command is recorded in OUT/commands.txt; each
# run's own flags are in its flags.json (and OUT/runs.csv).
set -euo pipefail

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

SCALE=cpu DRY_RUN=0 RUNS="" OUT="" JOBS=1
while (($#)); do
  case "$1" in
    --scale=*) SCALE=${1#*=} ;;
    --runs=*) RUNS=${1#*=} ;;
    --out=*) OUT=${1#*=} ;;
    --jobs=*) JOBS=${1#*=} ;;
    --scale | --runs | --out | --jobs)
      (($# >= 2)) || die "$1 needs a value"
      declare "$(tr a-z A-Z <<<"${1#--}")=$2"
      shift ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (options: --scale=cpu|paper, --dry_run, --runs DIR, --out DIR," \
      "--jobs N)" ;;
  esac
  shift
done
case "$SCALE" in
  cpu | paper) ;;
  *) die "--scale=$SCALE is unknown; choose cpu or paper" ;;
esac
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs=$JOBS must be a positive integer"
# Paths given relative to where the script was called from; then work from the repository root
# (the flagfiles are named relative to it).
for var in RUNS OUT; do
  if [[ -n ${!var} && ${!var} != /* ]]; then declare "$var=$PWD/${!var}"; fi
done
cd "$(dirname "$0")"
RUNS=${RUNS:-runs/$SCALE}
OUT=${OUT:-results/$SCALE}

# ---------------------------------------------------------------------------------------------
# The runs. Both scales set the same variables; the loops further down turn them into commands.
#
# IMBALANCE_*   MNIST 4 vs 9, paper Fig. 2: flagfile x pos_ratio x method x seed.
# MNIST_NOISY_* MNIST BackgroundFlip 40%, the report's experiment (accuracy curves).
# TABLE_*       CIFAR noisy labels, paper Tables 1 (UniformFlip) and 2 (BackgroundFlip):
#               experiment=flagfile x method x seed. clean_only runs 2,000 steps and finetune
#               5,000 from the baseline of its seed (reference §3); weighted is BackgroundFlip
#               only.
# CLEAN_SWEEP_* paper Fig. 4, on the cifar10_background setting: clean images per class.
# NOISE_SWEEP_* paper Fig. 5, on the cifar10_uniform setting: fraction of corrupted labels.
#               Neither sweep lists its flagfile's own value (10 per class, ratio 0.4): that point
#               is the table's run, which plots.py adds to the sweep.
if [[ $SCALE == paper ]]; then
  IMBALANCE_FLAGS=configs/mnist_imbalance.flags            # 8,000 steps, as the paper
  IMBALANCE_EXTRA=""
  IMBALANCE_RATIOS="0.9 0.95 0.98 0.99 0.995"
  IMBALANCE_METHODS="l2rw baseline ratio resample hard_mining random"
  # The original's 10 runs, seed (t * 123456789) % 100000 for t = 0..9.
  IMBALANCE_SEEDS="0 56789 13578 70367 27156 83945 40734 97523 54312 11101"
  MNIST_NOISY_FLAGS=configs/mnist_background_lenet.flags
  MNIST_NOISY_METHODS="baseline l2rw"
  MNIST_NOISY_SEEDS="0 6 28"                               # 0: background class 3, as the report
  TABLE_EXPERIMENTS="cifar10_uniform=configs/cifar10_uniform_wrn28_10.flags
                     cifar100_uniform=configs/cifar100_uniform_wrn28_10.flags
                     cifar10_background=configs/cifar10_background_resnet32.flags
                     cifar100_background=configs/cifar100_background_resnet32.flags"
  TABLE_METHODS="baseline random l2rw clean_only finetune weighted"
  TABLE_SEEDS="0 6 28 184 229"                             # the paper's five background classes
  CLEAN_SWEEP_METHODS="l2rw"                               # the baseline needs no clean set
  CLEAN_SWEEP_PER_CLASS="1 2 5 20 50 100"                  # (and 10) 10 ... 1,000 clean images
  NOISE_SWEEP_METHODS="baseline l2rw"
  NOISE_SWEEP_RATIOS="0 0.1 0.2 0.3 0.5"                  # (and 0.4)
  SWEEP_SEEDS="$TABLE_SEEDS"
else
  # Sized to finish in about 2 hours with --jobs=2 on 2 cores: every figure at reduced size.
  IMBALANCE_FLAGS=configs/mnist_imbalance.flags             # the paper's setting, 400 steps
  IMBALANCE_EXTRA="--num_steps=400 --eval_interval=100"     # (L2RW is near its best by then)
  IMBALANCE_RATIOS="0.9 0.95 0.98 0.99 0.995"
  IMBALANCE_METHODS="l2rw baseline ratio resample hard_mining random"
  IMBALANCE_SEEDS="0 56789"
  MNIST_NOISY_FLAGS=configs/mnist_background_lenet_cpu.flags
  MNIST_NOISY_METHODS="baseline l2rw"
  MNIST_NOISY_SEEDS="0 6"                                  # (results/*/run.sh add seed 28)
  TABLE_EXPERIMENTS="cifar10_background=configs/cifar10_background_resnet32_cpu.flags
                     cifar10_uniform=configs/cifar10_uniform_wrn28_10_cpu.flags"
  TABLE_METHODS="baseline l2rw"
  TABLE_SEEDS="0 6"
  CLEAN_SWEEP_METHODS="l2rw"
  CLEAN_SWEEP_PER_CLASS="1 50"                              # (and 10)
  NOISE_SWEEP_METHODS="baseline l2rw"
  NOISE_SWEEP_RATIOS="0 0.2"                                # (and 0.4)
  SWEEP_SEEDS="0"
fi
CLEAN_SWEEP_EXPERIMENT=cifar10_background                  # the setting Fig. 4 varies
NOISE_SWEEP_EXPERIMENT=cifar10_uniform                     # the setting Fig. 5 varies
NUM_CLASSES_OF_SWEEP=10                                    # CIFAR-10: clean images = 10 x per class

# ---------------------------------------------------------------------------------------------
# Building the command list.

declare -A FLAGFILE=()
for entry in $TABLE_EXPERIMENTS; do FLAGFILE[${entry%%=*}]=${entry#*=}; done

# The value a flagfile gives --NAME (last occurrence), empty if none or no such file.
flag_value() {
  [[ -f $1 ]] || return 0
  sed -n "s/^--$2=//p" "$1" | tail -n 1
}

COMMANDS=() LOGDIRS=() FLAGFILES_USED=() AFTER=()  # AFTER: the run a run starts from, or ""
add_run() {  # add_run LOGDIR FLAGFILE [FLAG ...]
  local logdir=$1 flagfile=$2 cmd arg after=""
  shift 2
  printf -v cmd '%q ' python -m l2rw_tf.main "--flagfile=$flagfile" "$@" "--logdir=$logdir"
  for arg; do
    if [[ $arg == --finetune_from=* ]]; then after=${arg#*=}; fi
  done
  COMMANDS+=("${cmd% }")
  LOGDIRS+=("$logdir")
  FLAGFILES_USED+=("$flagfile")
  AFTER+=("$after")
}

# The flags a method adds to its setting's flagfile (reference §3), into METHOD_FLAGS.
method_flags() {  # method_flags METHOD EXPERIMENT SEED
  case "$1" in
    clean_only) METHOD_FLAGS=("--num_steps=2000") ;;
    finetune) METHOD_FLAGS=("--num_steps=5000" "--finetune_from=$RUNS/$2/baseline_seed$3") ;;
    *) METHOD_FLAGS=() ;;
  esac
}

for pos_ratio in $IMBALANCE_RATIOS; do
  for method in $IMBALANCE_METHODS; do
    for seed in $IMBALANCE_SEEDS; do
      # shellcheck disable=SC2086  # IMBALANCE_EXTRA is a list of flags
      add_run "$RUNS/mnist_imbalance/${method}_p${pos_ratio}_seed$seed" "$IMBALANCE_FLAGS" \
        "--method=$method" "--seed=$seed" "--pos_ratio=$pos_ratio" $IMBALANCE_EXTRA
    done
  done
done

for method in $MNIST_NOISY_METHODS; do
  for seed in $MNIST_NOISY_SEEDS; do
    add_run "$RUNS/mnist_background/${method}_seed$seed" "$MNIST_NOISY_FLAGS" \
      "--method=$method" "--seed=$seed"
  done
done

# Methods in the order of TABLE_METHODS, so every baseline precedes the finetune runs from it.
for entry in $TABLE_EXPERIMENTS; do
  experiment=${entry%%=*}
  for method in $TABLE_METHODS; do
    if [[ $method == weighted && $experiment != *background* ]]; then continue; fi
    for seed in $TABLE_SEEDS; do
      method_flags "$method" "$experiment" "$seed"
      add_run "$RUNS/$experiment/${method}_seed$seed" "${FLAGFILE[$experiment]}" \
        "--method=$method" "--seed=$seed" ${METHOD_FLAGS[@]+"${METHOD_FLAGS[@]}"}
    done
  done
done

# Fig. 4. The clean batch (100 in the paper's flagfile) cannot be larger than the clean set.
flagfile=${FLAGFILE[$CLEAN_SWEEP_EXPERIMENT]}
clean_batch=$(flag_value "$flagfile" clean_batch_size)
for per_class in $CLEAN_SWEEP_PER_CLASS; do
  clean_flags=("--clean_per_class=$per_class")
  size=$((per_class * NUM_CLASSES_OF_SWEEP))
  if [[ -n $clean_batch ]] && ((size < clean_batch)); then
    clean_flags+=("--clean_batch_size=$size")
  fi
  for method in $CLEAN_SWEEP_METHODS; do
    for seed in $SWEEP_SEEDS; do
      add_run "$RUNS/${CLEAN_SWEEP_EXPERIMENT}_clean_sweep/${method}_cpc${per_class}_seed$seed" \
        "$flagfile" "--method=$method" "--seed=$seed" "${clean_flags[@]}"
    done
  done
done

# Fig. 5.
flagfile=${FLAGFILE[$NOISE_SWEEP_EXPERIMENT]}
for ratio in $NOISE_SWEEP_RATIOS; do
  for method in $NOISE_SWEEP_METHODS; do
    for seed in $SWEEP_SEEDS; do
      add_run "$RUNS/${NOISE_SWEEP_EXPERIMENT}_noise_sweep/${method}_ratio${ratio}_seed$seed" \
        "$flagfile" "--method=$method" "--seed=$seed" "--ratio=$ratio"
    done
  done
done

N=${#COMMANDS[@]}
printf -v PLOTS_CMD '%q ' python -m l2rw_tf.plots "--runs=$RUNS" "--out=$OUT" "--scale=$SCALE"
PLOTS_CMD=${PLOTS_CMD% }
missing=$(printf '%s\n' "${FLAGFILES_USED[@]}" | sort -u | while read -r f; do
  [[ -f $f ]] || echo "$f"; done)

if ((DRY_RUN)); then
  printf '%s\n' "${COMMANDS[@]}"
  echo "# $N runs at --scale=$SCALE, then: $PLOTS_CMD" >&2
  if [[ -n $missing ]]; then echo "# note: missing flagfiles: $(echo $missing)" >&2; fi
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Running them.

[[ -z $missing ]] || die "missing flagfiles: $(echo $missing)"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# Offline data as CI uses it (docs/command_line.md), unless the caller says otherwise.
if [[ -z ${TFDS_DATA_DIR:-} && -d ../shared/tensorflow_datasets ]]; then
  TFDS_DATA_DIR=$(cd ../shared/tensorflow_datasets && pwd)
  export TFDS_DATA_DIR
fi

mkdir -p "$OUT" "$RUNS"
commit=$(git rev-parse --short HEAD 2>/dev/null) || commit=unknown
if [[ $commit != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then
  commit+=" with uncommitted changes"
fi
{
  echo "# run_experiments.sh --scale=$SCALE, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $commit"
  echo "# $N runs in this order, then the plots; each run's flags are in its flags.json"
  echo "# TFDS_DATA_DIR=${TFDS_DATA_DIR:-unset}"
  printf '%s\n' "${COMMANDS[@]}"
  echo "$PLOTS_CMD"
} >"$OUT/commands.txt"

# A run's output goes to LOGDIR.log beside its run directory (the CLI refuses foreign files
# inside it); running alone, also to the terminal.
run_one() {  # run_one K
  local log=${LOGDIRS[$1]}.log
  mkdir -p "${log%/*}"
  if ((JOBS == 1)); then
    eval "${COMMANDS[$1]}" 2>&1 | tee -a "$log"
  else
    eval "${COMMANDS[$1]}" >>"$log" 2>&1
  fi
}
failed() {  # failed K
  echo "[$(($1 + 1))/$N] FAILED (log: ${LOGDIRS[$1]}.log); fix it and rerun the script:" \
    "finished runs are skipped, interrupted ones resume" >&2
}

if ((JOBS == 1)); then
  for ((k = 0; k < N; k++)); do
    echo "[$((k + 1))/$N] ${COMMANDS[k]}"
    run_one "$k" || { failed "$k"; exit 1; }
  done
else
  # Split the cores between the runs, unless the caller set the threads.
  cores=$(nproc 2>/dev/null || echo "$JOBS")
  threads=$((cores / JOBS > 0 ? cores / JOBS : 1))
  export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-$threads}
  export TF_NUM_INTEROP_THREADS=${TF_NUM_INTEROP_THREADS:-$threads}
  declare -A RUNNING=() PID_OF=()  # pid -> run index; run directory -> pid
  FAILED=()
  finish() {  # finish PID: collect a run that ended
    local k=${RUNNING[$1]}
    unset "RUNNING[$1]"
    if (($2 == 0)); then echo "[$((k + 1))/$N] finished"; else failed "$k"; FAILED+=("$k"); fi
  }
  reap() {  # reap LIMIT: wait until fewer than LIMIT runs are running
    local pid status
    while ((${#RUNNING[@]} >= $1)); do
      status=0
      wait -n -p pid "${!RUNNING[@]}" || status=$?
      finish "$pid" "$status"
    done
  }
  for ((k = 0; k < N; k++)); do
    # A finetune run starts from its baseline's checkpoint: wait for that run first.
    if [[ -n ${AFTER[k]} ]]; then
      pid=${PID_OF[${AFTER[k]}]:-}
      if [[ -n $pid && -n ${RUNNING[$pid]:-} ]]; then
        status=0
        wait "$pid" || status=$?
        finish "$pid" "$status"
      fi
    fi
    reap "$JOBS"
    ((${#FAILED[@]} == 0)) || break
    echo "[$((k + 1))/$N] ${COMMANDS[k]}"
    run_one "$k" &
    RUNNING[$!]=$k
    PID_OF[${LOGDIRS[k]}]=$!
  done
  reap 1
  ((${#FAILED[@]} == 0)) || exit 1
fi

echo "[plots] $PLOTS_CMD"
eval "$PLOTS_CMD"
echo "done: $N runs in $RUNS, figures and tables in $OUT"
