"""A run is a value: `RunConfig`, every setting of one training run in one frozen object.

    config = RunConfig(dataset="cifar10", noise="uniform", ratio=0.4)   # Table 1's CIFAR-10
    config.model, config.num_steps        # "wrn28_10", 60000: the paper's defaults, resolved

Why one value: the command line (main.py), the run directory (its flags.json and the check
that a rerun resumes the same run), the builders (experiment.py) and the tools that read
finished runs (report.py, plots.py, cleanlab_eval.py) all speak of the same settings. Each field
here is one `--flag` of the command line (main.py defines the flags from these fields, their
help texts included), so adding a setting is adding a field, plus its rule in `_validate` if it
has one. Creating a RunConfig fills the settings left unset with the paper's value for the
task, dataset, noise and model (`_resolved`) and checks every rule that needs no data
(`_validate`): an invalid RunConfig does not exist. A bad value raises `UsageError`, a
ValueError naming the flag and the fix, which the command line prints as one line.

flags.json is this module's too: `record` writes what a run directory records, `read_record`
is the one reader of it and `from_record` the one place that understands run directories
written by earlier versions of this code.

Importable without TensorFlow: a bad flag is refused at once, not after TensorFlow (seconds)
and the data (tens of seconds) have loaded.
"""
import dataclasses
import json
import math
import os

from l2rw_tf import choices


class UsageError(ValueError):
    """A bad setting or run directory: reported in one line, exit status 2."""


RESNETS = ("resnet32", "wrn28_10", "resnet")
SEED_MAX = 2**32 - 1  # the largest seed numpy's RandomState and Keras take


def setting(kind, default, help_text, *, task=None, only=False, recorded=True, enum=None):
    """A field of RunConfig and the `--flag` of the same name: `kind` the absl flag type
    (string, integer, float, bool, list, enum), `help_text` its help. `recorded`: in flags.json
    (it defines what the run computes, so a run directory refuses to resume under another
    value); `task`: recorded for that task only; `only`: refused with the other task."""
    return dataclasses.field(default=default, metadata={
        "kind": kind, "help": help_text, "task": task, "only": only, "recorded": recorded,
        "enum": enum})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a run; None where the default depends on other settings (resolved on
    creation). `given`: the names set explicitly (the command line's present flags), for the
    rule that a task's own settings are not given to the other task; None counts those that
    differ from their default."""
    task: str = setting("enum", "noisy", "Experiment family: noisy (noisy labels) or imbalance "
                        "(MNIST 4 vs 9).", enum=choices.TASKS)
    dataset: str = setting(
        "string", "mnist", "Any tfds image-classification dataset by name (name[/config]"
        "[:version]: features image, of one size, and label, a ClassLabel; splits train and "
        "test), e.g. mnist, cifar10, cifar100 (the paper's, read in their source files' order), "
        "fashion_mnist, svhn_cropped (read in tfds' stored order), prepared in --data_dir or "
        "downloaded there on first use; or folder:PATH, an image folder PATH/{train,test}/"
        "<class>/<image> (e.g. folder:../shared/datasets/cifar10_jpeg, the CIFAR-10 JPEG copy). "
        "Images keep their channel count (1 grayscale, 3 RGB); pixels are scaled to [0, 1] for "
        "--dataset=mnist (the original MNIST code's) and to [-1, 1] for every other dataset (its "
        "CIFAR code's), fashion_mnist included. Defaults that depend on the dataset (--model, "
        "--augment) treat all but mnist as CIFAR.")
    data_dir: str = setting("string", None, "tfds data directory (default: $TFDS_DATA_DIR, then "
                            "~/tensorflow_datasets). Offline, point it at a prepared copy.",
                            recorded=False)
    model: str = setting("string", None, "lenet, resnet32, wrn28_10 or resnet (reduced ResNet, "
                         "see --units/--width). Default: lenet on MNIST; on other data wrn28_10 "
                         "for uniform noise and resnet32 otherwise (the paper's tables).")
    method: str = setting("string", "l2rw", "Weighting method: l2rw, baseline, random, resample; "
                          "imbalance only: ratio, hard_mining; noisy only: clean_only, finetune, "
                          "weighted (BackgroundFlip).")
    meta_grad: str = setting("string", "jvp", "How L2RW gets its meta-gradient: jvp (forward-mode "
                             "identity at eps=0), lookahead (Algorithm 1, nested tapes) or "
                             "layerwise (per-layer inner products, the fastest; models without "
                             "BatchNorm or dropout whose layers form a chain, e.g. lenet, mlp).")
    seed: int = setting("integer", 0, "Random seed of the data (split, clean set, noise) and, "
                        "unless --train_seed is given, of the initialisation and the batches.")
    train_seed: int = setting(
        "integer", None, "Seed of the initial weights, the batch order, the augmentation and the "
        "step's random draws (default: --seed, which then seeds everything). --seed alone fixes "
        "the data: the split, the clean set and the noise. The original MNIST code seeds only its "
        "split; another --train_seed with the same --seed redraws what it redraws on every run.")
    num_steps: int = setting("integer", None, "Training steps (default: imbalance 8000; noisy: "
                             "60000 for wrn28_10, 80000 for the other ResNets, 4000 for lenet). "
                             "The original clean_only runs 2000 steps and finetune 5000: pass "
                             "--num_steps for them.")
    batch_size: int = setting("integer", 100, "Noisy (training) batch size n.")
    clean_batch_size: int = setting("integer", None, "Clean batch size m (default: "
                                    "min(batch_size, clean set size), as the original).")
    hard_mining_pool: int = setting("integer", 500, "Batch from which hard_mining selects "
                                    "(original: 500).", task="imbalance", only=True)
    lr: float = setting("float", None, "(Initial) learning rate (default: imbalance 1e-3; noisy: "
                        "0.1 for the ResNets, 0.01 for lenet).")
    lr_boundaries: tuple = setting(
        "list", None, "Steps at which the learning rate changes to the next of --lr_values; as "
        "the original's scheduler, the new rate applies from 0-based step boundary-1 on (default "
        "for the noisy ResNets: 40000,50000 for wrn28_10, 40000,60000 otherwise; none for "
        "lenet).")
    lr_values: tuple = setting("list", None, "Learning rates from each of --lr_boundaries on, one "
                               "per boundary (the original's learn_rate_list; default "
                               "0.01,0.001 with the default boundaries).")
    finetune_lr: float = setting("float", 1e-3, "finetune: constant learning rate on the clean "
                                 "set (the original: the final rate of the schedule, 1e-3).",
                                 task="noisy")
    momentum: float = setting("float", 0.9, "Momentum (TF1 form).")
    weight_decay: float = setting("float", None, "L2 weight decay wd*sum(w^2) on conv/dense "
                                  "kernels (default: the model's, 1e-4 for the ResNets, 0 for "
                                  "lenet which has none).")
    clean_weight_decay: bool = setting("bool", True, "Include weight decay in the clean meta "
                                       "loss (as the original CIFAR code).")
    dropout: float = setting("float", None, "ResNets: dropout rate before conv1 of every unit but "
                             "the first (default: the model's, 0.3 for wrn28_10, 0 otherwise).",
                             task="noisy")
    bn_momentum: float = setting("float", None, "ResNets: decay of the BatchNorm moving "
                                 "statistics (default 0.999, the original's; short runs need "
                                 "less, see the _cpu configs).", task="noisy")
    units: int = setting("integer", None, "--model=resnet: residual units per stage (default 5).",
                         task="noisy")
    width: float = setting("float", None, "--model=resnet: multiplier of the 16/32/64 stage "
                           "filters (default 1).", task="noisy")
    # Imbalance task.
    pos_ratio: float = setting("float", 0.995, "Imbalance: proportion of the majority class "
                               "(9s).", task="imbalance", only=True)
    ntrain: int = setting("integer", 5000, "Imbalance: total budget of training + clean images.",
                          task="imbalance", only=True)
    nval: int = setting("integer", 10, "Imbalance: clean images (half per class), from the "
                        "budget.", task="imbalance", only=True)
    ntest: int = setting("integer", 500, "Imbalance: test images (half per class).",
                         task="imbalance", only=True)
    original_eval_draws: bool = setting(
        "bool", False, "Imbalance: reproduce a side effect of the original MNIST script's "
        "evaluation, which after every 100th step reads 5,000 examples from the DataSet its "
        "training batches come from: after every 100th step the next 5,000 examples of the "
        "shuffled training stream are passed over. Off by default (this package's evaluation "
        "reads nothing from the training stream); on in configs/mnist_imbalance_original.flags. "
        "Not with --method=resample.", task="imbalance", only=True)
    # Noisy task.
    noise: str = setting("enum", "uniform", "Noisy: label noise, UniformFlip, BackgroundFlip or "
                         "none.", task="noisy", only=True, enum=("uniform", "background", "none"))
    ratio: float = setting("float", 0.4, "Noisy: fraction of the noisy pool whose labels are "
                           "corrupted.", task="noisy", only=True)
    noise_semantics: str = setting(
        "enum", "paper", "Noisy: paper (uniform flips always change the class) or original (the "
        "original code's draw, bit-for-bit: never class C-1, the label may stay).", task="noisy",
        only=True, enum=("paper", "original"))
    num_clean: int = setting("integer", None, "Noisy: clean images, drawn at random as the "
                             "original (default 1000 for uniform/none noise; see "
                             "--clean_per_class).", task="noisy", only=True)
    clean_per_class: int = setting("integer", None, "Noisy: a class-balanced clean set of this "
                                   "many images per class, as the paper describes (default 10 "
                                   "for background noise). Exclusive with --num_clean.",
                                   task="noisy", only=True)
    num_hyper_val: int = setting("integer", 5000, "Noisy: hyper-validation images held out of "
                                 "the training split (clean and corrupted copies, for monitoring "
                                 "only).", task="noisy", only=True)
    num_train_subset: int = setting("integer", None, "Noisy: train on only the first K images of "
                                    "the shuffled noisy pool (corrupted at --ratio), for "
                                    "CPU-scale settings.", task="noisy", only=True)
    augment: bool = setting("bool", None, "Noisy: pad 2 px, random crop, random flip on noisy "
                            "and clean batches (default: on except for MNIST).", task="noisy",
                            only=True)
    finetune_from: str = setting("string", None, "finetune: run directory of a finished baseline "
                                 "run of the same data and model, whose final weights are the "
                                 "starting point.", task="noisy", only=True)
    # How the run is carried out: not recorded (a run directory resumes under other values).
    eval_interval: int = setting("integer", 100, "Evaluate and log every this many steps.",
                                 recorded=False)
    checkpoint_interval: int = setting("integer", 500, "Checkpoint every this many steps.",
                                       recorded=False)
    eval_batch_size: int = setting("integer", 250, "Batch size of evaluation passes.",
                                   recorded=False)
    logdir: str = setting("string", None, "Run directory (default: runs/<task>_<dataset>_"
                          "<method>_seed<seed>).", recorded=False)
    deterministic: bool = setting("bool", True, "Enable TF op determinism (bitwise-reproducible "
                                  "on CPU).", recorded=False)
    distribute: str = setting(
        "string", "none", "none (one device), mirrored (tf.distribute.MirroredStrategy: every GPU "
        "of this machine, or its --cpu_devices) or multi_worker (MultiWorkerMirroredStrategy: a "
        "cluster described by TF_CONFIG; run the same command on every worker, with the same "
        "--logdir on a shared file system: the chief writes the run, every worker resumes from "
        "it). --batch_size is the global batch, split evenly over the replicas; the L2RW weights "
        "are the global batch's, as on one device (README: Scaling out).", recorded=False)
    cpu_devices: int = setting("integer", None, "--distribute=mirrored on a machine without "
                               "GPUs: split the CPU into this many logical devices, one replica "
                               "each (for trying and testing multi-device runs).", recorded=False)
    sync_batch_norm: bool = setting(
        "bool", False, "ResNets: BatchNormalization(synchronized=True), batch statistics of the "
        "global batch under --distribute (exact); without it each replica normalises its part "
        "with its own statistics (Keras' default), which changes the weights and the step. Needs "
        "--meta_grad=lookahead with --distribute (forward mode does not pass the statistics' "
        "all-reduce).")
    mixed_precision: str = setting(
        "string", "float32", "Keras' global dtype policy: float32, mixed_bfloat16 (layers compute "
        "in bfloat16, variables stay float32; CPUs with AVX512_BF16/AMX, TPUs, recent GPUs) or "
        "mixed_float16 (GPUs; with Keras' dynamic loss scaling, "
        "keras.optimizers.LossScaleOptimizer). Losses, alignments and weights are computed in "
        "float32 under every policy.")
    given: dataclasses.InitVar[frozenset] = None

    def __post_init__(self, given):
        for name, value in _resolved(self).items():
            object.__setattr__(self, name, value)
        _validate(self, given)

    @property
    def training_seed(self):
        """The seed of everything but the data (--train_seed, by default --seed)."""
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def run_dir(self):
        """--logdir, by default runs/<task>_<dataset>[_<noise>]_<method>_seed<seed>."""
        if self.logdir:
            return self.logdir
        if self.task == "imbalance":
            name = f"{self.task}_{self.dataset}_{self.method}_seed{self.seed}"
        else:
            dataset = self.dataset.replace(":", "_").replace("/", "_").replace(".", "")
            name = f"{self.task}_{dataset}_{self.noise}_{self.method}_seed{self.seed}"
        return os.path.join("runs", name)


FIELDS = dataclasses.fields(RunConfig)


def from_flags(flag_values):
    """The RunConfig of parsed absl flags (main.py's); the flags given are `given`."""
    given = {f.name: flag_values[f.name].value for f in FIELDS if flag_values[f.name].present}
    return RunConfig(**given, given=frozenset(given))


# ---------------------------------------------------------------------------------------------
# Defaults: the paper's setting of the task, dataset, noise and model (reference §3).

def _resolved(config):
    """The values of the settings left unset (None), and every value in its type, so that
    flags.json records what the run really uses (and compares numbers as numbers)."""
    c, out = config, {}
    noisy = c.task == "noisy"
    mnist = c.dataset == "mnist"
    model = c.model
    if model is None:
        model = out["model"] = "lenet" if (mnist or not noisy) else (
            "wrn28_10" if c.noise == "uniform" else "resnet32")
    if noisy and c.num_clean is None and c.clean_per_class is None:
        if c.noise == "background":
            out["clean_per_class"] = 10
        else:
            out["num_clean"] = 1000
    if noisy and c.augment is None:
        out["augment"] = not mnist
    boundaries, values = c.lr_boundaries, c.lr_values
    if not noisy or model in ("lenet", "mlp"):
        defaults = {"num_steps": 8000, "lr": 1e-3} if not noisy else {"num_steps": 4000,
                                                                       "lr": 0.01}
    else:
        wrn = model == "wrn28_10"
        defaults = {"num_steps": 60000 if wrn else 80000, "lr": 0.1}
        if boundaries is None and values is None:
            boundaries, values = (40000, 50000 if wrn else 60000), (0.01, 0.001)
    out.update({name: value for name, value in defaults.items() if getattr(c, name) is None})
    if c.weight_decay is None:
        out["weight_decay"] = 1e-4 if model in RESNETS else 0.0
    try:  # the command line gives the lists as strings
        if boundaries is not None:
            out["lr_boundaries"] = tuple(int(b) for b in boundaries)
        if values is not None:
            out["lr_values"] = tuple(float(v) for v in values)
    except ValueError:
        raise UsageError(f"--lr_boundaries={','.join(map(str, boundaries or ()))} / --lr_values="
                         f"{','.join(map(str, values or ()))} must be integers / numbers") \
            from None
    for f in FIELDS:  # an integer given for a float setting (in Python) is that float
        value = out.get(f.name, getattr(c, f.name))
        if f.metadata["kind"] == "float" and isinstance(value, int) and not isinstance(value,
                                                                                       bool):
            out[f.name] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# Rules: every check of the settings that needs no data, in the order they are reported.

def _validate(c, given):
    """Raises UsageError at the first rule `c` breaks, in the order the command line has always
    checked them (what the machine must offer is `check_machine`'s, checked after these)."""
    for f in FIELDS:
        values = getattr(c, f.name)
        values = values if isinstance(values, tuple) else [values]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UsageError(f"--{f.name}={','.join(map(str, values))} is not a finite number")
    _validate_choices(c)
    _validate_distribute(c)
    _unknown("mixed_precision", c.mixed_precision, choices.PRECISIONS)
    _validate_task_settings(c, given)
    _unknown("model", c.model, choices.MODELS)
    if c.task == "imbalance":
        _validate_imbalance(c)
    else:
        _validate_noisy(c)
    _validate_training(c)
    _validate_model(c)


def _unknown(flag, value, known):
    if value not in known:
        raise UsageError(f"--{flag}={value} is unknown; choose one of {', '.join(known)}")


def _validate_choices(c):
    _unknown("method", c.method, choices.METHODS)
    task_methods = choices.TASK_METHODS[c.task]
    if c.method not in task_methods:
        other = [t for t, methods in choices.TASK_METHODS.items() if c.method in methods]
        raise UsageError(f"--method={c.method} applies to --task={other[0]} only; with "
                         f"--task={c.task} choose one of {', '.join(task_methods)}")
    _unknown("meta_grad", c.meta_grad, choices.META_GRADIENTS)


def _validate_distribute(c):
    """--distribute, --cpu_devices and --sync_batch_norm (TF_CONFIG: `check_machine`)."""
    _unknown("distribute", c.distribute, choices.DISTRIBUTE)
    if c.cpu_devices is not None:
        if c.distribute != "mirrored":
            raise UsageError(f"--cpu_devices applies to --distribute=mirrored (one machine), not "
                             f"--distribute={c.distribute}")
        if c.cpu_devices < 1:
            raise UsageError(f"--cpu_devices={c.cpu_devices} must be >= 1")
    if c.sync_batch_norm and c.model not in RESNETS:
        raise UsageError(f"--sync_batch_norm applies to the ResNet models, not --model={c.model} "
                         f"(which has no BatchNorm)")
    if c.distribute != "none" and c.method == "hard_mining":
        raise UsageError("--method=hard_mining ranks its whole pool at once: not with "
                         "--distribute; use --distribute=none")
    if c.distribute != "none" and c.sync_batch_norm and c.method == "l2rw" \
            and c.meta_grad == "jvp":
        raise UsageError("--meta_grad=jvp does not differentiate through synchronized "
                         "BatchNorm's all-reduce (TensorFlow's forward mode): use "
                         "--meta_grad=lookahead with --sync_batch_norm and --distribute")


def _validate_task_settings(c, given):
    """The settings of one task are not given to the other."""
    other_task = "noisy" if c.task == "imbalance" else "imbalance"
    for f in FIELDS:
        if f.metadata["only"] and f.metadata["task"] == other_task and (
                f.name in given if given is not None else getattr(c, f.name) != f.default):
            raise UsageError(f"--{f.name} applies to --task={other_task} only, not "
                             f"--task={c.task}")


def _validate_imbalance(c):
    if c.dataset != "mnist":
        raise UsageError(f"--task=imbalance is MNIST 4 vs 9: --dataset must be mnist, not "
                         f"{c.dataset}")
    if not 0.0 < c.pos_ratio < 1.0:
        raise UsageError(f"--pos_ratio={c.pos_ratio} must be strictly between 0 and 1")
    if c.nval < 2 or c.nval % 2:
        raise UsageError(f"--nval={c.nval} must be even and >= 2 (half of each class)")
    if c.nval >= c.ntrain:
        raise UsageError(f"--nval={c.nval} must be smaller than --ntrain={c.ntrain}")
    if c.clean_batch_size is not None and not 0 < c.clean_batch_size <= c.nval:
        raise UsageError(f"--clean_batch_size={c.clean_batch_size} must be in "
                         f"[1, nval={c.nval}]")
    if c.hard_mining_pool <= 0:
        raise UsageError(f"--hard_mining_pool={c.hard_mining_pool} must be positive")
    if c.original_eval_draws and c.method == "resample":
        raise UsageError("--original_eval_draws reproduces the original's shuffled "
                         "training stream; --method=resample has class-balanced batches")


def _validate_noisy(c):
    # Only the name's form here: whether tfds has such an image-classification dataset is found
    # when the data is loaded (data.load_dataset; a one-line error too).
    if not choices.is_tfds_name(c.dataset) and not c.dataset.startswith(choices.FOLDER_PREFIX):
        raise UsageError(f"--dataset={c.dataset} is not a tfds dataset name (name[/config]"
                         f"[:version], e.g. fashion_mnist or cifar10:3.0.2) nor folder:PATH")
    if not 0.0 <= c.ratio < 1.0:
        raise UsageError(f"--ratio={c.ratio} must be in [0, 1)")
    if c.num_clean is not None and c.clean_per_class is not None:
        raise UsageError("--num_clean and --clean_per_class exclude each other; give one")
    for name in ("num_clean", "clean_per_class", "num_train_subset"):
        if getattr(c, name) is not None and getattr(c, name) <= 0:
            raise UsageError(f"--{name}={getattr(c, name)} must be positive")
    if c.num_hyper_val < 0:
        raise UsageError(f"--num_hyper_val={c.num_hyper_val} must be >= 0")
    if c.method == "weighted" and c.noise != "background":
        raise UsageError(f"--method=weighted is the BackgroundFlip baseline: it needs "
                         f"--noise=background, not --noise={c.noise}")
    if (c.method == "finetune") != (c.finetune_from is not None):
        raise UsageError("--method=finetune needs --finetune_from=<baseline run directory>"
                         if c.method == "finetune" else
                         f"--finetune_from applies to --method=finetune, not "
                         f"--method={c.method}")
    if c.clean_batch_size is not None and c.clean_batch_size <= 0:
        raise UsageError(f"--clean_batch_size={c.clean_batch_size} must be positive")
    if c.finetune_lr <= 0:
        raise UsageError(f"--finetune_lr={c.finetune_lr} must be positive")


def _validate_training(c):
    for name in ("num_steps", "batch_size", "eval_interval", "checkpoint_interval", "ntest",
                 "eval_batch_size"):
        if getattr(c, name) <= 0:
            raise UsageError(f"--{name}={getattr(c, name)} must be positive")
    if c.lr <= 0:
        raise UsageError(f"--lr={c.lr} must be positive")
    if not 0.0 <= c.momentum < 1.0:
        raise UsageError(f"--momentum={c.momentum} must be in [0, 1)")
    # numpy's RandomState and Keras' seeding take seeds in [0, 2**32); the label noise is drawn
    # from RandomState(seed + 1).
    if not 0 <= c.seed <= SEED_MAX - 1:
        raise UsageError(f"--seed={c.seed} must be in [0, {SEED_MAX - 1}] (--seed + 1 seeds the "
                         f"label noise, and seeds are below 2**32)")
    if c.train_seed is not None and not 0 <= c.train_seed <= SEED_MAX:
        raise UsageError(f"--train_seed={c.train_seed} must be in [0, {SEED_MAX}] (seeds are "
                         f"below 2**32)")
    if c.method == "hard_mining" and c.hard_mining_pool < c.batch_size:
        raise UsageError(f"--hard_mining_pool={c.hard_mining_pool} must be at least --batch_size="
                         f"{c.batch_size}: the pool hard_mining ranks (the original's is 5x the "
                         f"batch)")
    boundaries, values = c.lr_boundaries or (), c.lr_values or ()
    if len(boundaries) != len(values):
        raise UsageError(f"--lr_values needs one rate per --lr_boundaries entry, got "
                         f"{len(values)} rates for {len(boundaries)} boundaries")
    if any(b < 1 for b in boundaries) or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise UsageError(f"--lr_boundaries={','.join(map(str, boundaries))} must be strictly "
                         f"increasing steps >= 1")
    if any(v <= 0 for v in values):
        raise UsageError(f"--lr_values={','.join(map(str, values))} must be positive")


def _validate_model(c):
    if c.weight_decay < 0:
        raise UsageError(f"--weight_decay={c.weight_decay} must be >= 0")
    if c.model not in RESNETS:
        if c.weight_decay > 0:
            raise UsageError(f"--weight_decay={c.weight_decay}: --model={c.model} has no weight "
                             f"decay (the ResNets have)")
        for name in ("dropout", "bn_momentum", "units", "width"):
            if getattr(c, name) is not None:
                raise UsageError(f"--{name} applies to the ResNet models, not --model={c.model}")
    if c.model != "resnet":
        for name in ("units", "width"):
            if getattr(c, name) is not None:
                raise UsageError(f"--{name} applies to --model=resnet (the reduced ResNet), not "
                                 f"--model={c.model}")
    if c.dropout is not None and not 0.0 <= c.dropout < 1.0:
        raise UsageError(f"--dropout={c.dropout} must be in [0, 1)")
    if c.bn_momentum is not None and not 0.0 <= c.bn_momentum < 1.0:
        raise UsageError(f"--bn_momentum={c.bn_momentum} must be in [0, 1)")
    if c.units is not None and c.units < 1:
        raise UsageError(f"--units={c.units} must be >= 1")
    if c.width is not None and c.width <= 0:
        raise UsageError(f"--width={c.width} must be positive")


# ---------------------------------------------------------------------------------------------
# The machine: what a valid run needs of the place it runs in (not of its settings).

def check_machine(config):
    """Refuses, before TensorFlow loads, a run this machine cannot start: --distribute=
    multi_worker without a readable TF_CONFIG, or a tfds data directory that is not one."""
    if config.distribute == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise UsageError("--distribute=multi_worker reads the cluster from TF_CONFIG, which "
                             "is not set (README: Scaling out)")
        multi_worker_chief(config)  # a one-line error for a malformed TF_CONFIG
    # A local tfds data directory (--data_dir, else $TFDS_DATA_DIR) must be a directory: as
    # data.load_dataset refuses it, but before TensorFlow loads. (Image folders do not use it.)
    path = config.data_dir or os.environ.get("TFDS_DATA_DIR")
    if config.dataset.startswith(choices.FOLDER_PREFIX) or not path or "://" in path:
        return
    if os.path.isfile(path):
        raise UsageError(f"tfds data directory {path} is a file, not a directory; point "
                         f"--data_dir or TFDS_DATA_DIR at a tfds data directory (it holds "
                         f"<dataset>/<version>/ folders)")
    if not os.path.isdir(path):
        raise UsageError(f"tfds data directory {path} does not exist (dataset "
                         f"{config.dataset!r} is prepared nowhere there); point --data_dir or "
                         f"TFDS_DATA_DIR at a prepared tfds directory, or create it to download "
                         f"{config.dataset!r} into it")


def multi_worker_chief(config):
    """Whether this process is the chief of the TF_CONFIG cluster, by TensorFlow's rule: the task
    of type "chief", or worker 0 when the cluster has none. True without TF_CONFIG or outside
    --distribute=multi_worker. Read without TensorFlow, before it is imported."""
    text = os.environ.get("TF_CONFIG")
    if config.distribute != "multi_worker" or not text:
        return True
    try:
        cluster_config = json.loads(text)
        cluster, task = cluster_config["cluster"], cluster_config["task"]
        task_type, index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError('TF_CONFIG must be JSON {"cluster": {"worker": ["host:port", ...]}, '
                         '"task": {"type": "worker", "index": i}}') from None
    if task_type == "chief":
        return True
    return task_type == "worker" and index == 0 and "chief" not in cluster


def data_location(config):
    """The tfds data directory the data is read from, as an absolute path (--data_dir, else
    $TFDS_DATA_DIR), recorded in flags.json so that what reruns the run's data (cleanlab_eval)
    reads the same; None for an image folder or tfds' default directory."""
    path = config.data_dir or os.environ.get("TFDS_DATA_DIR")
    if config.dataset.startswith(choices.FOLDER_PREFIX) or not path:
        return None
    return path if "://" in path else os.path.abspath(path)


# ---------------------------------------------------------------------------------------------
# flags.json: what a run directory records, and reading it back.

FLAGS_JSON = "flags.json"
# Recorded as unset (null) at these values: run directories from before the setting hold none
# of it, and resume under it.
UNSET_WHEN = {"mixed_precision": "float32", "sync_batch_norm": False,
              "original_eval_draws": False}
# Recorded beside the settings (they follow from them, so they are not compared on resume).
DERIVED = ("input_shape", "pixel_range")
# The settings that make a run's data (split, clean set, noise) and its network: runs that share
# the first train on the same examples (cleanlab_eval's baseline run); a finetune run shares
# both with the baseline it starts from.
DATA_SETTINGS = ("task", "dataset", "noise", "ratio", "noise_semantics", "num_clean",
                 "clean_per_class", "num_hyper_val", "num_train_subset", "seed")
NETWORK_SETTINGS = ("model", "dropout", "bn_momentum", "units", "width", "weight_decay")


def record(config):
    """The settings flags.json records: those that define what the run computes (a run
    directory refuses to resume under other values). --meta_grad only changes how L2RW computes
    its weights: a baseline run directory resumes under any value of it."""
    recorded = {}
    for f in FIELDS:
        if not f.metadata["recorded"] or f.metadata["task"] not in (None, config.task):
            continue
        if f.name == "meta_grad" and config.method != "l2rw":
            continue
        value = getattr(config, f.name)
        if f.name in UNSET_WHEN and value == UNSET_WHEN[f.name]:
            value = None
        recorded[f.name] = list(value) if isinstance(value, tuple) else value
    return recorded


def resume_changes(saved, config):
    """{flag: (recorded, now)} of the settings in which the record `saved` of a run directory
    differs from `config`. A setting a run directory does not record (written before it
    existed) must be unset."""
    return {k: (saved.get(k), v) for k, v in record(config).items()
            if saved.get(k) != v and (k in saved or v is not None)}


def read_record(run_dir):
    """flags.json of `run_dir` as written (a dict; OSError or ValueError if unreadable): the one
    reader of it, for the tools that show what a run recorded (report.py, plots.py)."""
    with open(os.path.join(run_dir, FLAGS_JSON)) as f:
        return json.load(f)


def from_record(recorded):
    """The RunConfig of a flags.json record, of this version or an earlier one: unset (null)
    settings and those it does not record take their defaults; the inputs recorded beside the
    settings are left aside, the data directory read from it."""
    names = {f.name for f in FIELDS}
    values = {}
    for name, value in recorded.items():
        if name in DERIVED:
            continue
        if name not in names:
            raise UsageError(f"flags.json has a flag --{name} this version does not know")
        if value is not None:
            values[name] = tuple(value) if isinstance(value, list) else value
    return RunConfig(**values, given=frozenset(values))
