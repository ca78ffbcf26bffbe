"""The one entry point: `python -m l2rw_tf.main --flagfile=configs/mnist_imbalance.flags`.

Flag names follow the original scripts (`pos_ratio`, `ntrain`, `nval`, `ntest`, ...). A run writes
into `--logdir` (see train.py); rerunning the same command resumes it, and a finished run is
reported, not rerun.
"""
import json
import os
import sys

from absl import app, flags  # noqa: F401 -- app defines --help/--helpfull

FLAGS = flags.FLAGS

flags.DEFINE_enum("task", "imbalance", ["imbalance"], "Experiment family.")
flags.DEFINE_string("dataset", "mnist", "tfds dataset name.")
flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR, then "
                    "~/tensorflow_datasets). Offline, point it at a prepared copy.")
flags.DEFINE_string("model", "lenet", "Model name (see l2rw_tf.models.build_model).")
flags.DEFINE_string("method", "l2rw", "Weighting method: one of l2rw, baseline, ratio, random, "
                    "resample, hard_mining.")
flags.DEFINE_string("meta_grad", "jvp", "How L2RW gets its meta-gradient: jvp (forward-mode "
                    "identity at eps=0) or lookahead (Algorithm 1, nested tapes).")
flags.DEFINE_integer("seed", 0, "Random seed of data construction, initialisation and batches.")
flags.DEFINE_integer("num_steps", 8000, "Training steps.")
flags.DEFINE_integer("batch_size", 100, "Noisy (training) batch size n.")
flags.DEFINE_integer("clean_batch_size", None, "Clean batch size m (default: min(batch_size, "
                     "clean set size), as the original).")
flags.DEFINE_integer("hard_mining_pool", 500, "Batch from which hard_mining selects (original: "
                     "500).")
flags.DEFINE_float("lr", 1e-3, "Learning rate.")
flags.DEFINE_float("momentum", 0.9, "Momentum (TF1 form).")
flags.DEFINE_float("weight_decay", 0.0, "L2 weight decay coefficient on kernels (models that "
                   "take it).")
flags.DEFINE_bool("clean_weight_decay", True, "Include weight decay in the clean meta loss "
                  "(as the original CIFAR code).")
flags.DEFINE_float("pos_ratio", 0.995, "Imbalance: proportion of the majority class (9s).")
flags.DEFINE_integer("ntrain", 5000, "Imbalance: total budget of training + clean images.")
flags.DEFINE_integer("nval", 10, "Imbalance: clean images (half per class), from the budget.")
flags.DEFINE_integer("ntest", 500, "Imbalance: test images (half per class).")
flags.DEFINE_integer("eval_interval", 100, "Evaluate and log every this many steps.")
flags.DEFINE_integer("checkpoint_interval", 500, "Checkpoint every this many steps.")
flags.DEFINE_string("logdir", None, "Run directory (default: runs/<task>_<dataset>_<method>_"
                    "seed<seed>).")
flags.DEFINE_bool("deterministic", True, "Enable TF op determinism (bitwise-reproducible on CPU).")

# Flags that define what a run computes; a run directory refuses to resume under other values.
RUN_FLAGS = ("task", "dataset", "model", "method", "meta_grad", "seed", "num_steps",
             "batch_size", "clean_batch_size", "hard_mining_pool", "lr", "momentum",
             "weight_decay", "clean_weight_decay", "pos_ratio", "ntrain", "nval", "ntest")


class UsageError(ValueError):
    """A bad flag value or run directory: reported in one line, exit status 2."""


def validate_flags():
    from l2rw_tf import reweight, train
    f = FLAGS
    if f.method not in train.METHODS:
        raise UsageError(f"--method={f.method} is unknown; choose one of {', '.join(train.METHODS)}")
    if f.meta_grad not in reweight.META_GRADIENTS:
        raise UsageError(f"--meta_grad={f.meta_grad} is unknown; choose one of "
                         f"{', '.join(reweight.META_GRADIENTS)}")
    if not 0.0 < f.pos_ratio < 1.0:
        raise UsageError(f"--pos_ratio={f.pos_ratio} must be strictly between 0 and 1")
    if f.nval < 2 or f.nval % 2:
        raise UsageError(f"--nval={f.nval} must be even and >= 2 (half of each class)")
    if f.nval >= f.ntrain:
        raise UsageError(f"--nval={f.nval} must be smaller than --ntrain={f.ntrain}")
    for name in ("num_steps", "batch_size", "eval_interval", "checkpoint_interval", "ntest"):
        if getattr(f, name) <= 0:
            raise UsageError(f"--{name}={getattr(f, name)} must be positive")
    if f.clean_batch_size is not None and not 0 < f.clean_batch_size <= f.nval:
        raise UsageError(f"--clean_batch_size={f.clean_batch_size} must be in [1, nval={f.nval}]")
    if f.lr <= 0:
        raise UsageError(f"--lr={f.lr} must be positive")


def run_flags():
    return {name: getattr(FLAGS, name) for name in RUN_FLAGS}


def prepare_run_dir(run_dir):
    """Creates the run directory, or checks that an existing one holds this same run."""
    flags_path = os.path.join(run_dir, "flags.json")
    if os.path.exists(flags_path):
        with open(flags_path) as f:
            saved = json.load(f)
        changed = {k: (saved.get(k), v) for k, v in run_flags().items() if saved.get(k) != v}
        if changed:
            diff = ", ".join(f"--{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise UsageError(f"{run_dir} holds a different run ({diff}); use a new --logdir")
    elif os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UsageError(f"{run_dir} exists and is not a run directory; use a new --logdir")
    os.makedirs(run_dir, exist_ok=True)
    return flags_path


def build_experiment():
    """Data, model, optimizer and input pipelines from the flags."""
    import tensorflow as tf
    from l2rw_tf import data, models, train
    f = FLAGS
    uses_clean = f.method in train.USES_CLEAN_SET
    experiment = data.mnist_imbalance(
        pos_ratio=f.pos_ratio, ntrain=f.ntrain, nval=f.nval if uses_clean else 0,
        ntest=f.ntest, seed=f.seed, data_dir=f.data_dir)
    if not uses_clean:  # the original baselines train on the whole budget
        experiment.clean_images = experiment.train_images[:2]
        experiment.clean_labels = experiment.train_labels[:2]
    model = models.build_model(f.model, experiment.num_classes, experiment.input_shape,
                               seed=f.seed)
    optimizer = train.TF1Momentum(f.lr, momentum=f.momentum)
    if f.method == "resample":
        train_ds = data.class_balanced_dataset(experiment.train_images, experiment.train_labels,
                                               f.batch_size, seed=f.seed)
    else:
        batch = f.hard_mining_pool if f.method == "hard_mining" else f.batch_size
        train_ds = data.example_dataset(experiment.train_images, experiment.train_labels,
                                        experiment.train_is_noisy, batch, seed=f.seed)
    clean_batch = f.clean_batch_size or min(f.batch_size, len(experiment.clean_labels))
    clean_ds = data.example_dataset(experiment.clean_images, experiment.clean_labels,
                                    batch_size=clean_batch, seed=f.seed + 1)
    evaluate = train.make_evaluate(model, experiment.eval_sets, data.to_float)
    del tf
    return experiment, model, optimizer, train_ds, clean_ds, evaluate


def main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
    validate_flags()
    f = FLAGS
    run_dir = f.logdir or os.path.join("runs", f"{f.task}_{f.dataset}_{f.method}_seed{f.seed}")
    result_path = os.path.join(run_dir, "result.json")
    flags_path = prepare_run_dir(run_dir)
    if os.path.exists(result_path):
        with open(result_path) as fh:
            print(f"{run_dir} is complete: {fh.read()}")
        return 0

    import keras
    import tensorflow as tf
    from l2rw_tf import data, train
    keras.utils.set_random_seed(f.seed)
    if f.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        experiment, model, optimizer, train_ds, clean_ds, evaluate = build_experiment()
    except data.DataError as e:
        raise UsageError(str(e)) from None
    train.write_json(flags_path, run_flags())
    print(f"run directory {run_dir}: {experiment.info}", flush=True)
    config = train.StepConfig(method=f.method, meta_grad=f.meta_grad,
                              clean_weight_decay=f.clean_weight_decay, pos_ratio=f.pos_ratio,
                              seed=f.seed)
    final = train.train(model, optimizer, train_ds, clean_ds, evaluate, run_dir, f.num_steps,
                        config, eval_interval=f.eval_interval,
                        checkpoint_interval=f.checkpoint_interval,
                        log=lambda msg: print(msg, flush=True))
    final["data"] = experiment.info
    train.write_json(result_path, final)
    print(f"final: {json.dumps(final)}", flush=True)
    return 0


def entry(argv=None):
    """Parses flags (flagfiles included) and runs; bad input exits 2 with a one-line error."""
    try:
        sys.exit(main(FLAGS(sys.argv if argv is None else argv)))
    except (flags.Error, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    entry()
