"""Builds what a run trains from its RunConfig: `build(config) -> Experiment`.

    experiment = build(config)   # data, model, optimizer, input pipelines, evaluation, step

Why a module of its own: the command line (launch.py) and cleanlab_eval.py (whose folds train
the same model on parts of the training set) build the same things from the same settings, so
the builders take the config as an argument and return named records. The checks that need the
data (batch sizes against the sets, --meta_grad=layerwise against the model) are here, where
the data and the model first exist; every other rule is config.py's.
"""
import os
from typing import Any, Callable, NamedTuple

from l2rw_tf import config as run_config
from l2rw_tf.config import UsageError


class Inputs(NamedTuple):
    """The experiment's arrays (`data.ExperimentData`), how batches are scaled (`data.to_float`
    or `data.to_signed`) and whether they are augmented."""
    data: Any
    preprocess: Callable
    augment: bool


class Training(NamedTuple):
    """What trains on the inputs: the model, its optimizer, the noisy and clean batch streams
    and the evaluation."""
    model: Any
    optimizer: Any
    train_ds: Any
    clean_ds: Any
    evaluate: Callable


class Experiment(NamedTuple):
    """Everything a run trains: `Inputs`, `Training` and the step's settings (`StepConfig`)."""
    data: Any
    preprocess: Callable
    augment: bool
    model: Any
    optimizer: Any
    train_ds: Any
    clean_ds: Any
    evaluate: Callable
    step: Any


def build(config):
    """The Experiment of `config`: data, model, optimizer, input pipelines, evaluation, step."""
    inputs = build_data(config)
    training = build_training(config, inputs)
    return Experiment(*inputs, *training, step=step_config(config, inputs.data))


def build_data(config):
    """The experiment's arrays of `config`, checked against the batch sizes, with their
    preprocessing and augmentation (`Inputs`)."""
    from l2rw_tf import data
    try:
        if config.task == "imbalance":
            return _imbalance_data(config)
        return _noisy_data(config)
    except data.DataError as e:
        raise UsageError(str(e)) from None


def _imbalance_data(c):
    from l2rw_tf import data, train
    uses_clean = c.method in train.USES_CLEAN_SET
    arrays = data.mnist_imbalance(pos_ratio=c.pos_ratio, ntrain=c.ntrain,
                                  nval=c.nval if uses_clean else 0, ntest=c.ntest, seed=c.seed,
                                  data_dir=c.data_dir)
    if not uses_clean:  # the original baselines train on the whole budget
        arrays.clean_images = arrays.train_images[:2]
        arrays.clean_labels = arrays.train_labels[:2]
    return Inputs(arrays, data.to_float, False)


def _noisy_data(c):
    from l2rw_tf import data, noise, train
    arrays = data.noisy_experiment(
        c.dataset, c.noise, c.ratio, c.noise_semantics, num_clean=c.num_clean or 0,
        clean_per_class=c.clean_per_class, num_hyper_val=c.num_hyper_val, seed=c.seed,
        num_train_subset=c.num_train_subset, data_dir=c.data_dir)
    # MNIST in [0, 1] as the original MNIST code; everything else in [-1, 1] as its CIFAR code.
    preprocess = data.to_float if c.dataset == "mnist" else data.to_signed
    corrupted = arrays.train_is_noisy
    if corrupted.any():  # memorisation of the corrupted labels, on at most 1,000 of them
        keep = min(1000, int(corrupted.sum()))
        arrays.eval_sets["train_corrupted"] = (
            arrays.train_images[corrupted][:keep], arrays.train_labels[corrupted][:keep])
    clean_size = len(arrays.clean_labels)
    if c.clean_batch_size is not None and c.clean_batch_size > clean_size:
        raise UsageError(f"--clean_batch_size={c.clean_batch_size} exceeds the clean set "
                         f"({clean_size} images)")
    if c.method in train.TRAINS_ON_CLEAN_SET and c.batch_size > clean_size:
        raise UsageError(f"--batch_size={c.batch_size} exceeds the clean set ({clean_size} "
                         f"images) that --method={c.method} trains on")
    if c.batch_size > len(arrays.train_labels):
        raise UsageError(f"--batch_size={c.batch_size} exceeds the noisy training set "
                         f"({len(arrays.train_labels)} images)")
    if c.noise == "background":  # for the logs (the step computes its own, step_config)
        arrays.info["background_weight"] = noise.background_weight(arrays.num_classes, c.ratio)
    return Inputs(arrays, preprocess, c.augment)


def build_training(config, inputs):
    """Model, optimizer, noisy and clean input pipelines and evaluation of `config`, on the
    arrays of `inputs` (cleanlab_eval trains on parts of the training set)."""
    from l2rw_tf import data, models, precision, reweight, train
    c, arrays, preprocess = config, inputs.data, inputs.preprocess
    seed = c.training_seed
    model = models.build_model(c.model, arrays.num_classes, arrays.input_shape, seed=seed,
                               weight_decay=c.weight_decay, dropout=c.dropout,
                               bn_momentum=c.bn_momentum, units=c.units, width=c.width,
                               sync_batch_norm=c.sync_batch_norm or None)
    if c.method == "l2rw" and c.meta_grad == "layerwise":
        try:
            reweight.layerwise_layers(model)
        except ValueError as e:
            raise UsageError(f"--meta_grad=layerwise does not apply to --model={c.model}: "
                             f"{e}; use --meta_grad=jvp") from None
    if c.method == "finetune":
        lr = c.finetune_lr
    else:
        lr = train.learning_rate(c.lr, c.lr_boundaries, c.lr_values)
    # Under mixed_float16, Keras' dynamic loss scaling around it (train.make_train_step).
    optimizer = precision.with_loss_scaling(train.TF1Momentum(lr, momentum=c.momentum),
                                            c.mixed_precision)
    # Noisy batches from the noisy set, or from the clean set for clean_only / finetune.
    if c.method in train.TRAINS_ON_CLEAN_SET:
        source = (arrays.clean_images, arrays.clean_labels, None)
    else:
        source = (arrays.train_images, arrays.train_labels, arrays.train_is_noisy)
    # Augmentation seeds: distinct per stream, fixed by the training seed.
    aug_seed = (lambda k: 1000 * seed + k) if inputs.augment else (lambda k: None)
    if c.method == "resample":
        train_ds = data.class_balanced_dataset(*source[:2], c.batch_size, seed=seed,
                                               preprocess=preprocess, is_noisy=source[2],
                                               augment_seed=aug_seed(0))
    else:
        batch = c.hard_mining_pool if c.method == "hard_mining" else c.batch_size
        skip = data.ORIGINAL_EVAL_DRAWS if c.task == "imbalance" and c.original_eval_draws \
            else None
        train_ds = data.example_dataset(*source, batch, seed=seed, preprocess=preprocess,
                                        augment_seed=aug_seed(0), skip=skip)
    clean_batch = c.clean_batch_size or min(c.batch_size, len(arrays.clean_labels))
    clean_ds = data.example_dataset(arrays.clean_images, arrays.clean_labels,
                                    batch_size=clean_batch, seed=seed + 1,
                                    preprocess=preprocess, augment_seed=aug_seed(1))
    evaluate = train.make_evaluate(model, arrays.eval_sets, preprocess,
                                   batch_size=c.eval_batch_size)
    return Training(model, optimizer, train_ds, clean_ds, evaluate)


def step_config(config, arrays):
    """The training step's settings (`step.StepConfig`) of `config` on the data `arrays`: for
    --method=weighted, the BackgroundFlip class and its weight."""
    from l2rw_tf import noise, step
    background = config.task == "noisy" and config.noise == "background"
    return step.StepConfig(
        method=config.method, meta_grad=config.meta_grad,
        clean_weight_decay=config.clean_weight_decay, pos_ratio=config.pos_ratio,
        seed=config.training_seed, background_class=arrays.info.get("background_class") or 0,
        background_weight=(noise.background_weight(arrays.num_classes, config.ratio)
                           if background else 1.0))


def training_examples(config, arrays):
    """(labels, true labels, is_noisy) of the examples the noisy batches index into, for the
    per-example weight export; None when the batches come from the clean set."""
    from l2rw_tf import train
    if config.method in train.TRAINS_ON_CLEAN_SET:
        return None
    labels = arrays.train_labels
    true_labels = arrays.train_clean_labels if arrays.train_clean_labels is not None else labels
    return labels, true_labels, arrays.train_is_noisy


def finetune_source(config):
    """The checkpoint of the finished baseline run (--finetune_from) a finetune run starts
    from, checked to share its data and network."""
    import tensorflow as tf
    run_dir = config.finetune_from
    flags_path = os.path.join(run_dir, run_config.FLAGS_JSON)
    if not os.path.exists(os.path.join(run_dir, "result.json")) or not os.path.exists(flags_path):
        raise UsageError(f"--finetune_from={run_dir} is not a finished run directory (no "
                         f"result.json); train the baseline first")
    saved = run_config.read_record(run_dir)
    if saved.get("method") != "baseline":
        raise UsageError(f"--finetune_from={run_dir} is a --method={saved.get('method')} run; "
                         f"finetune starts from a baseline run")
    now = run_config.record(config)
    changed = [k for k in run_config.DATA_SETTINGS + run_config.NETWORK_SETTINGS
               if saved.get(k) != now.get(k)]
    if changed:
        k = changed[0]
        raise UsageError(f"--finetune_from={run_dir} was run with --{k}={saved.get(k)!r}, this "
                         f"run has --{k}={now.get(k)!r}; they must match")
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, "ckpt"))
    if latest is None:
        raise UsageError(f"--finetune_from={run_dir} holds no checkpoint")
    return latest
