"""The one entry point: `python -m l2rw_tf.main --flagfile=configs/<setting>.flags`.

Two tasks:

* `--task=imbalance`: MNIST 4 vs 9 class imbalance (paper Fig. 2; configs/mnist_imbalance.flags).
  Flag names follow the original scripts (`pos_ratio`, `ntrain`, `nval`, `ntest`, ...).
* `--task=noisy` (the default): noisy labels (paper Tables 1-2, reference §3), UniformFlip or
  BackgroundFlip on `mnist`, `cifar10`, `cifar100` or `folder:PATH`. Settings left unset take the
  paper's values for the dataset, noise and model, so
  `python -m l2rw_tf.main --dataset=cifar10 --noise=uniform --ratio=0.4` is Table 1's CIFAR-10
  setting (WRN-28-10, 1,000 clean images, 60K steps, lr 0.1 -> 0.01 -> 0.001 at 40K / 50K).

A run writes into `--logdir` (see train.py); rerunning the same command resumes it, and a
finished run is reported, not rerun.
"""
import contextlib
import errno
import json
import locale
import math
import os
import signal
import sys
import tempfile

from absl import flags

from l2rw_tf import choices

FLAGS = flags.FLAGS

flags.DEFINE_enum("task", "noisy", list(choices.TASKS), "Experiment family: noisy (noisy labels) or "
                  "imbalance (MNIST 4 vs 9).")
flags.DEFINE_string("dataset", "mnist", "Any tfds image-classification dataset by name "
                    "(name[/config][:version]: features image, of one size, and label, a "
                    "ClassLabel; splits train and test), e.g. mnist, cifar10, cifar100 (the "
                    "paper's, read in their source files' order), fashion_mnist, svhn_cropped "
                    "(read in tfds' stored order), prepared in --data_dir or downloaded there on "
                    "first use; or folder:PATH, an image folder PATH/{train,test}/<class>/<image> "
                    "(e.g. folder:../shared/datasets/cifar10_jpeg, the CIFAR-10 JPEG copy). "
                    "Images keep their channel count (1 grayscale, 3 RGB); pixels are scaled to "
                    "[0, 1] for --dataset=mnist (the original MNIST code's) and to [-1, 1] for "
                    "every other dataset (its CIFAR code's), fashion_mnist included. Defaults "
                    "that depend on the dataset (--model, --augment) treat all but mnist as CIFAR.")
flags.DEFINE_string("data_dir", None, "tfds data directory (default: $TFDS_DATA_DIR, then "
                    "~/tensorflow_datasets). Offline, point it at a prepared copy.")
flags.DEFINE_string("model", None, "lenet, resnet32, wrn28_10 or resnet (reduced ResNet, see "
                    "--units/--width). Default: lenet on MNIST; on other data wrn28_10 for "
                    "uniform noise and resnet32 otherwise (the paper's tables).")
flags.DEFINE_string("method", "l2rw", "Weighting method: l2rw, baseline, random, resample; "
                    "imbalance only: ratio, hard_mining; noisy only: clean_only, finetune, "
                    "weighted (BackgroundFlip).")
flags.DEFINE_string("meta_grad", "jvp", "How L2RW gets its meta-gradient: jvp (forward-mode "
                    "identity at eps=0), lookahead (Algorithm 1, nested tapes) or layerwise "
                    "(per-layer inner products, the fastest; models without BatchNorm or "
                    "dropout whose layers form a chain, e.g. lenet, mlp).")
flags.DEFINE_integer("seed", 0, "Random seed of the data (split, clean set, noise) and, unless "
                     "--train_seed is given, of the initialisation and the batches.")
flags.DEFINE_integer("train_seed", None, "Seed of the initial weights, the batch order, the "
                     "augmentation and the step's random draws (default: --seed, which then "
                     "seeds everything). --seed alone fixes the data: the split, the clean set "
                     "and the noise. The original MNIST code seeds only its split; another "
                     "--train_seed with the same --seed redraws what it redraws on every run.")
flags.DEFINE_integer("num_steps", None, "Training steps (default: imbalance 8000; noisy: 60000 "
                     "for wrn28_10, 80000 for the other ResNets, 4000 for lenet). The original "
                     "clean_only runs 2000 steps and finetune 5000: pass --num_steps for them.")
flags.DEFINE_integer("batch_size", 100, "Noisy (training) batch size n.")
flags.DEFINE_integer("clean_batch_size", None, "Clean batch size m (default: min(batch_size, "
                     "clean set size), as the original).")
flags.DEFINE_integer("hard_mining_pool", 500, "Batch from which hard_mining selects (original: "
                     "500).")
flags.DEFINE_float("lr", None, "(Initial) learning rate (default: imbalance 1e-3; noisy: 0.1 "
                   "for the ResNets, 0.01 for lenet).")
flags.DEFINE_list("lr_boundaries", None, "Steps at which the learning rate changes to the next "
                  "of --lr_values; as the original's scheduler, the new rate applies from 0-based "
                  "step boundary-1 on (default for the noisy ResNets: 40000,50000 for wrn28_10, "
                  "40000,60000 otherwise; none for lenet).")
flags.DEFINE_list("lr_values", None, "Learning rates from each of --lr_boundaries on, one per "
                  "boundary (the original's learn_rate_list; default 0.01,0.001 with the default "
                  "boundaries).")
flags.DEFINE_float("finetune_lr", 1e-3, "finetune: constant learning rate on the clean set (the "
                   "original: the final rate of the schedule, 1e-3).")
flags.DEFINE_float("momentum", 0.9, "Momentum (TF1 form).")
flags.DEFINE_float("weight_decay", None, "L2 weight decay wd*sum(w^2) on conv/dense kernels "
                   "(default: the model's, 1e-4 for the ResNets, 0 for lenet which has none).")
flags.DEFINE_bool("clean_weight_decay", True, "Include weight decay in the clean meta loss "
                  "(as the original CIFAR code).")
flags.DEFINE_float("dropout", None, "ResNets: dropout rate before conv1 of every unit but the "
                   "first (default: the model's, 0.3 for wrn28_10, 0 otherwise).")
flags.DEFINE_float("bn_momentum", None, "ResNets: decay of the BatchNorm moving statistics "
                   "(default 0.999, the original's; short runs need less, see the _cpu configs).")
flags.DEFINE_integer("units", None, "--model=resnet: residual units per stage (default 5).")
flags.DEFINE_float("width", None, "--model=resnet: multiplier of the 16/32/64 stage filters "
                   "(default 1).")
# Imbalance task.
flags.DEFINE_float("pos_ratio", 0.995, "Imbalance: proportion of the majority class (9s).")
flags.DEFINE_integer("ntrain", 5000, "Imbalance: total budget of training + clean images.")
flags.DEFINE_integer("nval", 10, "Imbalance: clean images (half per class), from the budget.")
flags.DEFINE_integer("ntest", 500, "Imbalance: test images (half per class).")
flags.DEFINE_bool("original_eval_draws", None, "Imbalance: reproduce a side effect of the "
                  "original MNIST script's evaluation, which after every 100th step reads 5,000 "
                  "examples from the DataSet its training batches come from: after every 100th "
                  "step the next 5,000 examples of the shuffled training stream are passed over. "
                  "Off by default (this package's evaluation reads nothing from the training "
                  "stream); on in configs/mnist_imbalance_original.flags. Not with "
                  "--method=resample.")
# Noisy task.
flags.DEFINE_enum("noise", "uniform", ["uniform", "background", "none"], "Noisy: label noise, "
                  "UniformFlip, BackgroundFlip or none.")
flags.DEFINE_float("ratio", 0.4, "Noisy: fraction of the noisy pool whose labels are corrupted.")
flags.DEFINE_enum("noise_semantics", "paper", ["paper", "original"], "Noisy: paper (uniform "
                  "flips always change the class) or original (the original code's draw, "
                  "bit-for-bit: never class C-1, the label may stay).")
flags.DEFINE_integer("num_clean", None, "Noisy: clean images, drawn at random as the original "
                     "(default 1000 for uniform/none noise; see --clean_per_class).")
flags.DEFINE_integer("clean_per_class", None, "Noisy: a class-balanced clean set of this many "
                     "images per class, as the paper describes (default 10 for background "
                     "noise). Exclusive with --num_clean.")
flags.DEFINE_integer("num_hyper_val", 5000, "Noisy: hyper-validation images held out of the "
                     "training split (clean and corrupted copies, for monitoring only).")
flags.DEFINE_integer("num_train_subset", None, "Noisy: train on only the first K images of the "
                     "shuffled noisy pool (corrupted at --ratio), for CPU-scale settings.")
flags.DEFINE_bool("augment", None, "Noisy: pad 2 px, random crop, random flip on noisy and clean "
                  "batches (default: on except for MNIST).")
flags.DEFINE_string("finetune_from", None, "finetune: run directory of a finished baseline run "
                    "of the same data and model, whose final weights are the starting point.")
flags.DEFINE_integer("eval_interval", 100, "Evaluate and log every this many steps.")
flags.DEFINE_integer("checkpoint_interval", 500, "Checkpoint every this many steps.")
flags.DEFINE_integer("eval_batch_size", 250, "Batch size of evaluation passes.")
flags.DEFINE_string("logdir", None, "Run directory (default: runs/<task>_<dataset>_<method>_"
                    "seed<seed>).")
flags.DEFINE_bool("deterministic", True, "Enable TF op determinism (bitwise-reproducible on CPU).")
flags.DEFINE_string("distribute", "none", "none (one device), mirrored (tf.distribute."
                    "MirroredStrategy: every GPU of this machine, or its --cpu_devices) or "
                    "multi_worker (MultiWorkerMirroredStrategy: a cluster described by TF_CONFIG; "
                    "run the same command on every worker, with the same --logdir on a shared "
                    "file system: the chief writes the run, every worker resumes from it). "
                    "--batch_size is the global batch, split evenly over the replicas; the L2RW "
                    "weights are the global batch's, as on one device (README: Scaling out).")
flags.DEFINE_integer("cpu_devices", None, "--distribute=mirrored on a machine without GPUs: split "
                     "the CPU into this many logical devices, one replica each (for trying and "
                     "testing multi-device runs).")
flags.DEFINE_bool("sync_batch_norm", False, "ResNets: BatchNormalization(synchronized=True), batch "
                  "statistics of the global batch under --distribute (exact); without it each "
                  "replica normalises its part with its own statistics (Keras' default), which "
                  "changes the weights and the step. Needs --meta_grad=lookahead with "
                  "--distribute (forward mode does not pass the statistics' all-reduce).")
flags.DEFINE_string("mixed_precision", "float32", "Keras' global dtype policy: float32, "
                    "mixed_bfloat16 (layers compute in bfloat16, variables stay float32; CPUs "
                    "with AVX512_BF16/AMX, TPUs, recent GPUs) or mixed_float16 (GPUs; with "
                    "Keras' dynamic loss scaling, keras.optimizers.LossScaleOptimizer). Losses, "
                    "alignments and weights are computed in float32 under every policy.")

# Flags that define what a run computes; a run directory refuses to resume under other values.
COMMON_RUN_FLAGS = ("task", "dataset", "model", "method", "meta_grad", "seed", "train_seed",
                    "num_steps", "batch_size", "clean_batch_size", "lr", "lr_boundaries",
                    "lr_values", "momentum", "weight_decay", "clean_weight_decay",
                    "mixed_precision", "sync_batch_norm")
TASK_RUN_FLAGS = {
    "imbalance": ("hard_mining_pool", "pos_ratio", "ntrain", "nval", "ntest",
                  "original_eval_draws"),
    "noisy": ("noise", "ratio", "noise_semantics", "num_clean", "clean_per_class",
              "num_hyper_val", "num_train_subset", "augment", "dropout", "bn_momentum", "units",
              "width", "finetune_from", "finetune_lr"),
}
IMBALANCE_ONLY = ("pos_ratio", "ntrain", "nval", "ntest", "hard_mining_pool",
                  "original_eval_draws")
NOISY_ONLY = ("noise", "ratio", "noise_semantics", "num_clean", "clean_per_class",
              "num_hyper_val", "num_train_subset", "augment", "finetune_from")
RESNETS = ("resnet32", "wrn28_10", "resnet")
SEED_MAX = 2**32 - 1  # the largest seed numpy's RandomState and Keras take


class UsageError(ValueError):
    """A bad flag value or run directory: reported in one line, exit status 2."""


def _present(name):
    return FLAGS[name].present > 0


def resolve_defaults():
    """Fills every flag left unset (None) with the setting of the task, dataset, noise and model
    (the paper's, reference §3), so flags.json records what the run really uses."""
    f = FLAGS
    noisy = f.task == "noisy"
    mnist = f.dataset == "mnist"
    if f.model is None:
        f.model = "lenet" if (mnist or not noisy) else (
            "wrn28_10" if f.noise == "uniform" else "resnet32")
    if noisy and f.num_clean is None and f.clean_per_class is None:
        if f.noise == "background":
            f.clean_per_class = 10
        else:
            f.num_clean = 1000
    if noisy and f.augment is None:
        f.augment = not mnist
    if not noisy or f.model in ("lenet", "mlp"):
        defaults = {"num_steps": 8000, "lr": 1e-3} if not noisy else {"num_steps": 4000,
                                                                       "lr": 0.01}
    else:
        wrn = f.model == "wrn28_10"
        defaults = {"num_steps": 60000 if wrn else 80000, "lr": 0.1}
        if f.lr_boundaries is None and f.lr_values is None:
            f.lr_boundaries = ["40000", "50000" if wrn else "60000"]
            f.lr_values = ["0.01", "0.001"]
    for name, value in defaults.items():
        if getattr(f, name) is None:
            setattr(f, name, value)
    if f.weight_decay is None:
        f.weight_decay = 1e-4 if f.model in RESNETS else 0.0
    if not f.original_eval_draws:  # off is recorded as unset: older run directories resume
        f.original_eval_draws = None
    # Lists as numbers, so flags.json compares them as such.
    try:
        if f.lr_boundaries is not None:
            f.lr_boundaries = [int(b) for b in f.lr_boundaries]
        if f.lr_values is not None:
            f.lr_values = [float(v) for v in f.lr_values]
    except ValueError:
        raise UsageError(f"--lr_boundaries={','.join(map(str, f.lr_boundaries))} / --lr_values="
                         f"{','.join(map(str, f.lr_values or []))} must be integers / numbers") \
            from None


def validate_flags():
    """Checks every flag value that needs no data, before TensorFlow is imported."""
    f = FLAGS
    for flag in FLAGS.get_flags_for_module(sys.modules[__name__]):
        values = flag.value if isinstance(flag.value, list) else [flag.value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            shown = ",".join(map(str, values))
            raise UsageError(f"--{flag.name}={shown} is not a finite number")
    task_methods = choices.TASK_METHODS[f.task]
    if f.method not in choices.METHODS:
        raise UsageError(f"--method={f.method} is unknown; choose one of "
                         f"{', '.join(choices.METHODS)}")
    if f.method not in task_methods:
        other = [t for t, methods in choices.TASK_METHODS.items() if f.method in methods]
        raise UsageError(f"--method={f.method} applies to --task={other[0]} only; with "
                         f"--task={f.task} choose one of {', '.join(task_methods)}")
    if f.meta_grad not in choices.META_GRADIENTS:
        raise UsageError(f"--meta_grad={f.meta_grad} is unknown; choose one of "
                         f"{', '.join(choices.META_GRADIENTS)}")
    validate_distribute_flags()
    validate_data_dir()
    if f.mixed_precision not in choices.PRECISIONS:
        raise UsageError(f"--mixed_precision={f.mixed_precision} is unknown; choose one of "
                         f"{', '.join(choices.PRECISIONS)}")
    other_task = NOISY_ONLY if f.task == "imbalance" else IMBALANCE_ONLY
    given = [name for name in other_task if _present(name)]
    if given:
        raise UsageError(f"--{given[0]} applies to --task="
                         f"{'noisy' if f.task == 'imbalance' else 'imbalance'} only, not "
                         f"--task={f.task}")
    if f.model not in choices.MODELS:
        raise UsageError(f"--model={f.model} is unknown; choose one of "
                         f"{', '.join(choices.MODELS)}")
    if f.task == "imbalance":
        if f.dataset != "mnist":
            raise UsageError(f"--task=imbalance is MNIST 4 vs 9: --dataset must be mnist, not "
                             f"{f.dataset}")
        if not 0.0 < f.pos_ratio < 1.0:
            raise UsageError(f"--pos_ratio={f.pos_ratio} must be strictly between 0 and 1")
        if f.nval < 2 or f.nval % 2:
            raise UsageError(f"--nval={f.nval} must be even and >= 2 (half of each class)")
        if f.nval >= f.ntrain:
            raise UsageError(f"--nval={f.nval} must be smaller than --ntrain={f.ntrain}")
        if f.clean_batch_size is not None and not 0 < f.clean_batch_size <= f.nval:
            raise UsageError(f"--clean_batch_size={f.clean_batch_size} must be in "
                             f"[1, nval={f.nval}]")
        if f.hard_mining_pool <= 0:
            raise UsageError(f"--hard_mining_pool={f.hard_mining_pool} must be positive")
        if f.original_eval_draws and f.method == "resample":
            raise UsageError("--original_eval_draws reproduces the original's shuffled "
                             "training stream; --method=resample has class-balanced batches")
    else:
        # Only the name's form here: whether tfds has such an image-classification dataset is
        # found when the data is loaded (data.load_dataset; a one-line error too).
        if (not choices.is_tfds_name(f.dataset)
                and not f.dataset.startswith(choices.FOLDER_PREFIX)):
            raise UsageError(f"--dataset={f.dataset} is not a tfds dataset name (name[/config]"
                             f"[:version], e.g. fashion_mnist or cifar10:3.0.2) nor folder:PATH")
        if not 0.0 <= f.ratio < 1.0:
            raise UsageError(f"--ratio={f.ratio} must be in [0, 1)")
        if f.num_clean is not None and f.clean_per_class is not None:
            raise UsageError("--num_clean and --clean_per_class exclude each other; give one")
        for name in ("num_clean", "clean_per_class", "num_train_subset"):
            if getattr(f, name) is not None and getattr(f, name) <= 0:
                raise UsageError(f"--{name}={getattr(f, name)} must be positive")
        if f.num_hyper_val < 0:
            raise UsageError(f"--num_hyper_val={f.num_hyper_val} must be >= 0")
        if f.method == "weighted" and f.noise != "background":
            raise UsageError(f"--method=weighted is the BackgroundFlip baseline: it needs "
                             f"--noise=background, not --noise={f.noise}")
        if (f.method == "finetune") != (f.finetune_from is not None):
            raise UsageError("--method=finetune needs --finetune_from=<baseline run directory>"
                             if f.method == "finetune" else
                             f"--finetune_from applies to --method=finetune, not "
                             f"--method={f.method}")
        if f.clean_batch_size is not None and f.clean_batch_size <= 0:
            raise UsageError(f"--clean_batch_size={f.clean_batch_size} must be positive")
        if f.finetune_lr <= 0:
            raise UsageError(f"--finetune_lr={f.finetune_lr} must be positive")
    for name in ("num_steps", "batch_size", "eval_interval", "checkpoint_interval", "ntest",
                 "eval_batch_size"):
        if getattr(f, name) <= 0:
            raise UsageError(f"--{name}={getattr(f, name)} must be positive")
    if f.lr <= 0:
        raise UsageError(f"--lr={f.lr} must be positive")
    if not 0.0 <= f.momentum < 1.0:
        raise UsageError(f"--momentum={f.momentum} must be in [0, 1)")
    # numpy's RandomState and Keras' seeding take seeds in [0, 2**32); the label noise is drawn
    # from RandomState(seed + 1).
    if not 0 <= f.seed <= SEED_MAX - 1:
        raise UsageError(f"--seed={f.seed} must be in [0, {SEED_MAX - 1}] (--seed + 1 seeds the "
                         f"label noise, and seeds are below 2**32)")
    if f.train_seed is not None and not 0 <= f.train_seed <= SEED_MAX:
        raise UsageError(f"--train_seed={f.train_seed} must be in [0, {SEED_MAX}] (seeds are "
                         f"below 2**32)")
    if f.method == "hard_mining" and f.hard_mining_pool < f.batch_size:
        raise UsageError(f"--hard_mining_pool={f.hard_mining_pool} must be at least --batch_size="
                         f"{f.batch_size}: the pool hard_mining ranks (the original's is 5x the "
                         f"batch)")
    boundaries, values = f.lr_boundaries or [], f.lr_values or []
    if len(boundaries) != len(values):
        raise UsageError(f"--lr_values needs one rate per --lr_boundaries entry, got "
                         f"{len(values)} rates for {len(boundaries)} boundaries")
    if any(b < 1 for b in boundaries) or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise UsageError(f"--lr_boundaries={','.join(map(str, boundaries))} must be strictly "
                         f"increasing steps >= 1")
    if any(v <= 0 for v in values):
        raise UsageError(f"--lr_values={','.join(map(str, values))} must be positive")
    if f.weight_decay < 0:
        raise UsageError(f"--weight_decay={f.weight_decay} must be >= 0")
    if f.model not in RESNETS:
        if f.weight_decay > 0:
            raise UsageError(f"--weight_decay={f.weight_decay}: --model={f.model} has no weight "
                             f"decay (the ResNets have)")
        for name in ("dropout", "bn_momentum", "units", "width"):
            if getattr(f, name) is not None:
                raise UsageError(f"--{name} applies to the ResNet models, not --model={f.model}")
    if f.model != "resnet":
        for name in ("units", "width"):
            if getattr(f, name) is not None:
                raise UsageError(f"--{name} applies to --model=resnet (the reduced ResNet), not "
                                 f"--model={f.model}")
    if f.dropout is not None and not 0.0 <= f.dropout < 1.0:
        raise UsageError(f"--dropout={f.dropout} must be in [0, 1)")
    if f.bn_momentum is not None and not 0.0 <= f.bn_momentum < 1.0:
        raise UsageError(f"--bn_momentum={f.bn_momentum} must be in [0, 1)")
    if f.units is not None and f.units < 1:
        raise UsageError(f"--units={f.units} must be >= 1")
    if f.width is not None and f.width <= 0:
        raise UsageError(f"--width={f.width} must be positive")


def validate_data_dir():
    """A local tfds data directory (--data_dir, else $TFDS_DATA_DIR) must be a directory: as
    data.load_dataset refuses it, but before TensorFlow loads. (Image folders do not use it.)"""
    f = FLAGS
    path = f.data_dir or os.environ.get("TFDS_DATA_DIR")
    if f.dataset.startswith(choices.FOLDER_PREFIX) or not path or "://" in path:
        return
    if os.path.isfile(path):
        raise UsageError(f"tfds data directory {path} is a file, not a directory; point "
                         f"--data_dir or TFDS_DATA_DIR at a tfds data directory (it holds "
                         f"<dataset>/<version>/ folders)")
    if not os.path.isdir(path):
        raise UsageError(f"tfds data directory {path} does not exist (dataset {f.dataset!r} is "
                         f"prepared nowhere there); point --data_dir or TFDS_DATA_DIR at a "
                         f"prepared tfds directory, or create it to download {f.dataset!r} "
                         f"into it")


def validate_distribute_flags():
    """--distribute, --cpu_devices, --sync_batch_norm and TF_CONFIG (multi_worker)."""
    f = FLAGS
    if f.distribute not in choices.DISTRIBUTE:
        raise UsageError(f"--distribute={f.distribute} is unknown; choose one of "
                         f"{', '.join(choices.DISTRIBUTE)}")
    if f.cpu_devices is not None:
        if f.distribute != "mirrored":
            raise UsageError(f"--cpu_devices applies to --distribute=mirrored (one machine), not "
                             f"--distribute={f.distribute}")
        if f.cpu_devices < 1:
            raise UsageError(f"--cpu_devices={f.cpu_devices} must be >= 1")
    if f.sync_batch_norm and f.model not in RESNETS:
        raise UsageError(f"--sync_batch_norm applies to the ResNet models, not --model={f.model} "
                         f"(which has no BatchNorm)")
    if f.distribute == "none":
        return
    if f.method == "hard_mining":
        raise UsageError("--method=hard_mining ranks its whole pool at once: not with "
                         "--distribute; use --distribute=none")
    if f.sync_batch_norm and f.method == "l2rw" and f.meta_grad == "jvp":
        raise UsageError("--meta_grad=jvp does not differentiate through synchronized "
                         "BatchNorm's all-reduce (TensorFlow's forward mode): use "
                         "--meta_grad=lookahead with --sync_batch_norm and --distribute")
    if f.distribute == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise UsageError("--distribute=multi_worker reads the cluster from TF_CONFIG, which "
                             "is not set (README: Scaling out)")
        multi_worker_chief()  # a one-line error for a malformed TF_CONFIG


def multi_worker_chief():
    """Whether this process is the chief of the TF_CONFIG cluster, by TensorFlow's rule: the task
    of type "chief", or worker 0 when the cluster has none. True without TF_CONFIG or outside
    --distribute=multi_worker. Read without TensorFlow, before it is imported."""
    text = os.environ.get("TF_CONFIG")
    if FLAGS.distribute != "multi_worker" or not text:
        return True
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError('TF_CONFIG must be JSON {"cluster": {"worker": ["host:port", ...]}, '
                         '"task": {"type": "worker", "index": i}}') from None
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


def run_flags():
    # --meta_grad only changes how L2RW computes its weights: a baseline run directory resumes
    # under any value of it.
    recorded = {name: getattr(FLAGS, name)
                for name in COMMON_RUN_FLAGS + TASK_RUN_FLAGS[FLAGS.task]
                if name != "meta_grad" or FLAGS.method == "l2rw"}
    # float32 (no mixed precision) is recorded as unset: run directories from before the flag
    # hold none and resume under it.
    if recorded["mixed_precision"] == "float32":
        recorded["mixed_precision"] = None
    if not recorded["sync_batch_norm"]:  # off is recorded as unset, likewise
        recorded["sync_batch_norm"] = None
    return recorded


LOCK_NAME = "running.pid"


@contextlib.contextmanager
def run_dir_lock(run_dir):
    """Holds `run_dir` for this process: a second process on the same run directory would
    interleave its checkpoints with ours. A lock left by a killed process is taken over."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with open(path) as fh:
            text = fh.read()
        pid = lock_holder(text)
        if pid is not None:
            raise UsageError(in_use_message(run_dir, pid)) from None
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    start = process_start_time(os.getpid())
    os.write(fd, (f"{os.getpid()} {start}" if start else str(os.getpid())).encode())
    os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


def lock_holder(text):
    """The pid of the live process that wrote a lock's `text` ("<pid> <start time>", or
    "<pid>" alone where the start time is unknown, as in locks of earlier versions); None when
    it names no other live process, or a process that started after the lock's writer (its pid
    reused: the writer was killed)."""
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return None
    pid = int(parts[0])
    if pid == os.getpid() or not process_alive(pid):
        return None
    start = process_start_time(pid)
    if len(parts) > 1 and start is not None and start != parts[1]:
        return None
    return pid


def in_use_message(run_dir, pid):
    path = os.path.join(run_dir, LOCK_NAME)
    return (f"{run_dir} is in use by process {pid} (training it now); wait for that run or stop "
            f"it, then rerun; if process {pid} is not training it (the lock outlived its run), "
            f"remove {path}")


def process_start_time(pid):
    """When process `pid` started, as a string (Linux: clock ticks since boot, field 22 of
    /proc/<pid>/stat), so a lock names its writer and not a later process given the same pid;
    None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_run_dir(run_dir):
    """Refuses, before any work, a run directory that cannot hold this run: one holding another
    run or other files, a file, or a place that cannot be written. Creates nothing."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise UsageError(f"--logdir={run_dir} is a file, not a directory; choose another --logdir")
    flags_path = os.path.join(run_dir, "flags.json")
    if os.path.exists(flags_path):
        try:
            with open(flags_path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"{flags_path} cannot be read ({type(e).__name__}); use a new "
                             f"--logdir") from None
        # A flag a run directory does not record (written before it existed) must be unset.
        changed = {k: (saved.get(k), v) for k, v in run_flags().items()
                   if saved.get(k) != v and (k in saved or v is not None)}
        if changed:
            diff = ", ".join(f"--{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise UsageError(f"{run_dir} holds a different run ({diff}); use a new --logdir")
    elif os.path.isdir(run_dir) and set(os.listdir(run_dir)) - {LOCK_NAME}:
        raise UsageError(f"{run_dir} exists and is not a run directory; use a new --logdir")
    check_writable(run_dir)
    return flags_path


def check_writable(path, flag="--logdir"):
    """Refuses a directory `path` that is a file or cannot be created or written: the nearest
    existing ancestor must take a new directory (tried, then removed: os.access says yes to
    root on read-only file systems such as /sys). Creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}={path} is a file, not a directory; choose another {flag}")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot create {flag}={path}: {parent} is a file, not a "
                         f"directory; choose another {flag}")
    check_path_length(path, parent, flag)
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".l2rw_probe_"))
    except OSError as e:
        raise UsageError(f"cannot create {flag}={path}: {parent} is not a writable "
                         f"directory ({e.strerror}); choose another {flag}") from None


# Room left under a run directory for the longest path written in it (ckpt/ckpt-<step>.data-...,
# tb/events.out.tfevents.<time>.<host>.<pid>...).
RUN_FILES_LENGTH = 160


def check_path_length(path, parent, flag):
    """Refuses a directory `path` whose name, or a file in it, would be too long for the file
    system of its existing ancestor `parent` (creating it would fail halfway)."""
    try:
        name_max, path_max = os.pathconf(parent, "PC_NAME_MAX"), os.pathconf(parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    full = os.path.abspath(path)
    longest = max(full.split(os.sep), key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > name_max:
        raise UsageError(f"{flag} has a path component of {len(os.fsencode(longest))} bytes, more "
                         f"than the {name_max} its file system allows; choose a shorter {flag}")
    if len(os.fsencode(full)) + RUN_FILES_LENGTH > path_max:
        raise UsageError(f"{flag} is {len(os.fsencode(full))} bytes long: the files of a run in "
                         f"it would exceed the file system's {path_max}-byte paths; choose a "
                         f"shorter {flag}")


def prepare_run_dir(run_dir):
    """Creates the run directory, or checks that an existing one holds this same run."""
    flags_path = check_run_dir(run_dir)
    missing, parent = [], os.path.abspath(run_dir)
    while not os.path.exists(parent):  # the directories makedirs creates, innermost first
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        for created in missing:  # nothing left behind of a directory that could not be made
            with contextlib.suppress(OSError):
                os.rmdir(created)
        raise UsageError(f"cannot create --logdir={run_dir} ({e.strerror}); choose another "
                         f"--logdir") from None
    return flags_path


# Flags a finetune run must share with the baseline it starts from (same split, same network).
FINETUNE_SHARED = ("dataset", "model", "seed", "noise", "ratio", "noise_semantics", "num_clean",
                   "clean_per_class", "num_hyper_val", "num_train_subset", "dropout",
                   "bn_momentum", "units", "width", "weight_decay")


def finetune_source(run_dir):
    """The checkpoint of a finished baseline run that a finetune run starts from."""
    import tensorflow as tf
    flags_path = os.path.join(run_dir, "flags.json")
    if not os.path.exists(os.path.join(run_dir, "result.json")) or not os.path.exists(flags_path):
        raise UsageError(f"--finetune_from={run_dir} is not a finished run directory (no "
                         f"result.json); train the baseline first")
    with open(flags_path) as fh:
        saved = json.load(fh)
    if saved.get("method") != "baseline":
        raise UsageError(f"--finetune_from={run_dir} is a --method={saved.get('method')} run; "
                         f"finetune starts from a baseline run")
    changed = [k for k in FINETUNE_SHARED if saved.get(k) != getattr(FLAGS, k)]
    if changed:
        k = changed[0]
        raise UsageError(f"--finetune_from={run_dir} was run with --{k}={saved.get(k)!r}, this "
                         f"run has --{k}={getattr(FLAGS, k)!r}; they must match")
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
    if latest is None:
        raise UsageError(f"--finetune_from={run_dir} holds no checkpoint")
    return latest


def build_experiment():
    """Data, model, optimizer and input pipelines from the flags."""
    experiment, preprocess, augment = build_data()
    return (experiment, *build_training(experiment, preprocess, augment), preprocess)


def build_data():
    """The experiment's arrays from the flags, checked against the batch sizes; with the
    preprocessing (`data.to_float` or `data.to_signed`) and whether to augment."""
    from l2rw_tf import data, noise, train
    f = FLAGS
    if f.task == "imbalance":
        uses_clean = f.method in train.USES_CLEAN_SET
        experiment = data.mnist_imbalance(
            pos_ratio=f.pos_ratio, ntrain=f.ntrain, nval=f.nval if uses_clean else 0,
            ntest=f.ntest, seed=f.seed, data_dir=f.data_dir)
        if not uses_clean:  # the original baselines train on the whole budget
            experiment.clean_images = experiment.train_images[:2]
            experiment.clean_labels = experiment.train_labels[:2]
        preprocess, augment = data.to_float, False
    else:
        experiment = data.noisy_experiment(
            f.dataset, f.noise, f.ratio, f.noise_semantics, num_clean=f.num_clean or 0,
            clean_per_class=f.clean_per_class, num_hyper_val=f.num_hyper_val, seed=f.seed,
            num_train_subset=f.num_train_subset, data_dir=f.data_dir)
        # MNIST in [0, 1] as the original MNIST code; everything else in [-1, 1] as its CIFAR.
        preprocess = data.to_float if f.dataset == "mnist" else data.to_signed
        augment = f.augment
        corrupted = experiment.train_is_noisy
        if corrupted.any():  # memorisation of the corrupted labels, on at most 1,000 of them
            keep = min(1000, int(corrupted.sum()))
            experiment.eval_sets["train_corrupted"] = (
                experiment.train_images[corrupted][:keep], experiment.train_labels[corrupted][:keep])
        clean_size = len(experiment.clean_labels)
        if f.clean_batch_size is not None and f.clean_batch_size > clean_size:
            raise UsageError(f"--clean_batch_size={f.clean_batch_size} exceeds the clean set "
                             f"({clean_size} images)")
        if f.method in train.TRAINS_ON_CLEAN_SET and f.batch_size > clean_size:
            raise UsageError(f"--batch_size={f.batch_size} exceeds the clean set ({clean_size} "
                             f"images) that --method={f.method} trains on")
        if f.batch_size > len(experiment.train_labels):
            raise UsageError(f"--batch_size={f.batch_size} exceeds the noisy training set "
                             f"({len(experiment.train_labels)} images)")
        if f.noise == "background":
            experiment.info["background_weight"] = noise.background_weight(
                experiment.num_classes, f.ratio)
    return experiment, preprocess, augment


def data_location():
    """The tfds data directory the data was read from, as an absolute path (--data_dir, else
    $TFDS_DATA_DIR), recorded in flags.json so that what reruns the run's data (cleanlab_eval)
    reads the same; None for an image folder or tfds' default directory."""
    path = FLAGS.data_dir or os.environ.get("TFDS_DATA_DIR")
    if FLAGS.dataset.startswith(choices.FOLDER_PREFIX) or not path:
        return None
    return path if "://" in path else os.path.abspath(path)


def train_seed():
    """The seed of everything but the data (--train_seed, by default --seed)."""
    return FLAGS.seed if FLAGS.train_seed is None else FLAGS.train_seed


def build_training(experiment, preprocess, augment):
    """Model, optimizer, noisy and clean input pipelines and evaluation of the flags, on the
    arrays of `experiment` (l2rw_tf.cleanlab_eval trains on parts of the training set)."""
    from l2rw_tf import data, models, precision, reweight, train
    f = FLAGS
    seed = train_seed()
    model = models.build_model(f.model, experiment.num_classes, experiment.input_shape,
                               seed=seed, weight_decay=f.weight_decay, dropout=f.dropout,
                               bn_momentum=f.bn_momentum, units=f.units, width=f.width,
                               sync_batch_norm=f.sync_batch_norm or None)
    if f.method == "l2rw" and f.meta_grad == "layerwise":
        try:
            reweight.layerwise_layers(model)
        except ValueError as e:
            raise UsageError(f"--meta_grad=layerwise does not apply to --model={f.model}: "
                             f"{e}; use --meta_grad=jvp") from None
    if f.method == "finetune":
        lr = f.finetune_lr
    else:
        lr = train.learning_rate(f.lr, f.lr_boundaries, f.lr_values)
    # Under mixed_float16, Keras' dynamic loss scaling around it (train.make_train_step).
    optimizer = precision.with_loss_scaling(train.TF1Momentum(lr, momentum=f.momentum),
                                            f.mixed_precision)
    # Noisy batches from the noisy set, or from the clean set for clean_only / finetune.
    if f.method in train.TRAINS_ON_CLEAN_SET:
        source = (experiment.clean_images, experiment.clean_labels, None)
    else:
        source = (experiment.train_images, experiment.train_labels, experiment.train_is_noisy)
    # Augmentation seeds: distinct per stream, fixed by the training seed.
    aug_seed = (lambda k: 1000 * seed + k) if augment else (lambda k: None)
    if f.method == "resample":
        train_ds = data.class_balanced_dataset(*source[:2], f.batch_size, seed=seed,
                                               preprocess=preprocess, is_noisy=source[2],
                                               augment_seed=aug_seed(0))
    else:
        batch = f.hard_mining_pool if f.method == "hard_mining" else f.batch_size
        skip = data.ORIGINAL_EVAL_DRAWS if f.task == "imbalance" and f.original_eval_draws \
            else None
        train_ds = data.example_dataset(*source, batch, seed=seed, preprocess=preprocess,
                                        augment_seed=aug_seed(0), skip=skip)
    clean_batch = f.clean_batch_size or min(f.batch_size, len(experiment.clean_labels))
    clean_ds = data.example_dataset(experiment.clean_images, experiment.clean_labels,
                                    batch_size=clean_batch, seed=seed + 1,
                                    preprocess=preprocess, augment_seed=aug_seed(1))
    evaluate = train.make_evaluate(model, experiment.eval_sets, preprocess,
                                   batch_size=f.eval_batch_size)
    return model, optimizer, train_ds, clean_ds, evaluate


def training_examples(experiment):
    """(labels, true labels, is_noisy) of the examples the noisy batches index into, for the
    per-example weight export; None when the batches come from the clean set."""
    from l2rw_tf import train
    if FLAGS.method in train.TRAINS_ON_CLEAN_SET:
        return None
    labels = experiment.train_labels
    true_labels = (experiment.train_clean_labels if experiment.train_clean_labels is not None
                   else labels)
    return labels, true_labels, experiment.train_is_noisy


def default_logdir():
    f = FLAGS
    if f.task == "imbalance":
        return os.path.join("runs", f"{f.task}_{f.dataset}_{f.method}_seed{f.seed}")
    name = f.dataset.replace(":", "_").replace("/", "_").replace(".", "")
    return os.path.join("runs", f"{f.task}_{name}_{f.noise}_{f.method}_seed{f.seed}")


# A write that fails for want of space (ENOSPC, EDQUOT, EFBIG): one line, and a rerun resumes.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class Stopped(Exception):
    """The run was stopped by a signal (exit status 128 + signal number)."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


# How the data is scaled: MNIST in [0, 1] as the original MNIST code, everything else in
# [-1, 1] as its CIFAR code.
PIXEL_RANGES = {"to_float": [0.0, 1.0], "to_signed": [-1.0, 1.0]}


def main(argv, stop_at_step=None):
    """Runs the parsed flags; returns the final metrics (as written to result.json). Every check
    that needs no data comes before TensorFlow is imported; the run directory is created only
    once the data and the model are built."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; all options are --flags")
    resolve_defaults()
    validate_flags()
    run_dir = FLAGS.logdir or default_logdir()
    result_path = os.path.join(run_dir, "result.json")
    check_run_dir(run_dir)
    if os.path.exists(result_path):
        with open(result_path) as fh:
            text = fh.read()
        print(f"{run_dir} is complete: {text}")
        return json.loads(text)
    if multi_worker_chief():  # the other workers of a cluster only read the chief's run
        check_lock(run_dir)
    from l2rw_tf import precision  # imports Keras: only after the checks that need none
    with precision.global_policy(FLAGS.mixed_precision):  # the model is built under it
        return train_run(run_dir, result_path, stop_at_step)


def check_lock(run_dir):
    """Refuses at once a run directory another live process is training."""
    path = os.path.join(run_dir, LOCK_NAME)
    try:
        with open(path) as fh:
            text = fh.read()
    except (OSError, ValueError):  # no lock (or an unreadable one, taken over)
        return
    pid = lock_holder(text)
    if pid is not None:  # (a UsageError is a ValueError: raised outside the try)
        raise UsageError(in_use_message(run_dir, pid))


def train_run(run_dir, result_path, stop_at_step=None):
    """Builds the experiment of the parsed flags and trains it in `run_dir` (resuming)."""
    f = FLAGS
    import keras
    import tensorflow as tf
    import l2rw_tf
    from l2rw_tf import data, distribute, step, train
    if f.cpu_devices:  # before anything initialises TensorFlow's devices
        distribute.use_cpu_devices(f.cpu_devices)
    strategy = distribute.make_strategy(f.distribute)
    chief = multi_worker_chief()
    init_fn = None
    if f.method == "finetune":
        source = finetune_source(f.finetune_from)
    seed = train_seed()
    keras.utils.set_random_seed(seed)
    if f.deterministic:
        tf.config.experimental.enable_op_determinism()
    try:
        with strategy.scope():  # model and optimizer variables mirrored on every replica
            experiment, model, optimizer, train_ds, clean_ds, evaluate, preprocess = \
                build_experiment()
    except data.DataError as e:
        raise UsageError(str(e)) from None
    replicas = strategy.num_replicas_in_sync
    for name, size in (("--batch_size", f.batch_size),
                       ("the clean batch size", clean_ds.element_spec["label"].shape[0])):
        if size % replicas:
            raise UsageError(f"{name}={size} does not split evenly over the {replicas} replicas "
                             f"of --distribute={f.distribute}; make it a multiple of {replicas}")
    if f.method == "finetune":
        def init_fn():
            tf.train.Checkpoint(model=model).restore(source).expect_partial() \
                .assert_existing_objects_matched()
            print(f"finetuning from {source}", flush=True)
    flags_path = prepare_run_dir(run_dir)
    inputs = {"input_shape": [int(d) for d in experiment.input_shape],
              "pixel_range": PIXEL_RANGES[preprocess.__name__], "data_dir": data_location()}
    examples = training_examples(experiment)
    label_probability = examples and (lambda: train.label_probabilities(
        model, preprocess, experiment.train_images, experiment.train_labels,
        batch_size=f.eval_batch_size))
    config = step.StepConfig(method=f.method, meta_grad=f.meta_grad,
                             clean_weight_decay=f.clean_weight_decay, pos_ratio=f.pos_ratio,
                             seed=seed,
                             background_class=experiment.info.get("background_class") or 0,
                             background_weight=experiment.info.get("background_weight", 1.0))
    # A multi-worker cluster's other workers neither lock nor write the run directory.
    with run_dir_lock(run_dir) if chief else contextlib.nullcontext():
        # The inputs and the data directory are recorded beside the flags (not compared on
        # resume: they follow from them, and the data may move).
        if chief:
            train.write_json(flags_path, {**run_flags(), **inputs})
        print(f"run directory {run_dir}: {experiment.info}; inputs {inputs['input_shape']} "
              f"scaled to {inputs['pixel_range']}; {replicas} replica(s)", flush=True)
        try:
            final = train.train(
                model, optimizer, train_ds, clean_ds, evaluate, run_dir, f.num_steps, config,
                eval_interval=f.eval_interval, checkpoint_interval=f.checkpoint_interval,
                log=lambda msg: print(msg, flush=True), stop_at_step=stop_at_step,
                init_fn=init_fn, examples=examples, label_probability=label_probability,
                strategy=strategy)
        except (train.Diverged, train.UnreadableCheckpoint, train.WriteFailed) as e:
            raise UsageError(str(e)) from None
        except train.Interrupted as e:
            raise Stopped(e.signum, str(e)) from None
        except OSError as e:
            if e.errno not in DISK_FULL_ERRNOS:
                raise
            raise UsageError(f"cannot write {e.filename or 'a file of the run'} ({e.strerror}); "
                             f"the checkpoints are intact: free space there and rerun the same "
                             f"command to resume") from None
        final["data"] = {**experiment.info, **inputs}
        final["runtime"] = l2rw_tf.runtime()
        final["replicas"] = replicas
        if chief:
            try:
                train.write_json(result_path, final)
            except OSError as e:
                if e.errno not in DISK_FULL_ERRNOS:
                    raise
                raise UsageError(f"cannot write {result_path} ({e.strerror}); training is "
                                 f"finished and checkpointed: free space there and rerun the "
                                 f"same command to write it") from None
    print(f"final: {json.dumps(train.finite_or_null(final))}", flush=True)
    return final


def check_flagfiles(args, including=()):
    """Refuses, before absl reads them, flagfiles among `args` (command-line arguments or the
    lines of a flagfile) that cannot be read, are not text in the locale's encoding (absl would
    raise OSError or UnicodeDecodeError), or include themselves (absl would only warn, and run
    without the rest of the file). `including`: the flagfiles being read, outermost first."""
    encoding = locale.getpreferredencoding(False)
    args = list(args)
    for i, arg in enumerate(args):
        if not FLAGS._is_flag_file_directive(arg):  # noqa: SLF001 -- absl's own rule
            continue
        if arg in ("--flagfile", "-flagfile"):
            if i + 1 >= len(args):
                continue  # absl's own one-line error
            path = os.path.expanduser(args[i + 1])
        else:
            path = FLAGS._extract_filename(arg)  # noqa: SLF001
        if not path:
            continue
        real = [os.path.realpath(p) for p in including]
        if os.path.realpath(path) in real:
            chain = " -> ".join([*including[real.index(os.path.realpath(path)):], path])
            raise UsageError(f"flagfile {path} includes itself ({chain}); remove that --flagfile "
                             f"line")
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as e:
            raise UsageError(f"cannot read flagfile {path} ({e.strerror or type(e).__name__})"
                             + (f", named in {including[-1]}" if including else "")) from None
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise UsageError(f"flagfile {path} is not {encoding} text (byte 0x{raw[e.start]:02x} "
                             f"at offset {e.start}); save it as {encoding}") from None
        # As absl reads a flagfile: a line that starts with a flagfile directive includes it.
        check_flagfiles([line for line in text.splitlines()
                         if FLAGS._is_flag_file_directive(line)],  # noqa: SLF001
                        (*including, path))


def run(argv, stop_at_step=None):
    """In-process entry (tests, notebooks): parses `argv` afresh (argv[0] is the program name,
    flagfiles included) and runs it; bad input raises UsageError or flags.Error."""
    FLAGS.unparse_flags()
    check_flagfiles(list(argv)[1:])
    FLAGS(list(argv))
    return main([argv[0]], stop_at_step=stop_at_step)


HELP_ARGS = {"-h": False, "-?": False, "--help": False, "--helpshort": False, "--helpfull": True}


def print_help(full):
    """The flags of this entry point (`full`: of every module, absl's own included)."""
    module = sys.modules[__name__]
    print(__doc__.strip().splitlines()[0])
    print(f"\nUsage: python -m l2rw_tf.main [--flagfile=configs/<setting>.flags] [--flag=value ...]"
          f"\n")
    print(FLAGS.get_help() if full else FLAGS.module_help(module))
    if not full:
        print("\nTry --helpfull to get a list of all flags.")


def raise_stopped(signum, frame):  # noqa: ARG001
    raise Stopped(signum, f"stopped by {signal.Signals(signum).name} before training started")


def entry(argv=None):
    """Parses flags (flagfiles included) and runs; bad input exits 2 with a one-line error, a
    signal 128 + its number with one line (training saves a checkpoint first)."""
    argv = sys.argv if argv is None else argv
    helps = [HELP_ARGS[a] for a in argv[1:] if a in HELP_ARGS]
    if helps:
        print_help(full=any(helps))
        sys.exit(0)
    # SIGTERM, like SIGINT, unwinds (the lock is removed); the training loop defers both.
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        check_flagfiles(argv[1:])
        main(FLAGS(argv))
        sys.exit(0)
    except (flags.Error, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"l2rw_tf: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("l2rw_tf: stopped by SIGINT before training started", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":
    entry()
