"""Training, the command line's driver: a resumable loop around the step of step.py that logs
what it does.

A run directory holds `flags.json` (the settings), `metrics.csv` (one row per evaluation),
`tb/` (TensorBoard), `ckpt/` (model, optimizer, step, input iterators, RNG) and, once finished,
`result.json`. Running the same settings on the same directory resumes from the last checkpoint;
a finished run is not run again.
"""
import contextlib
import csv
import glob
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from l2rw_tf import choices, data, distribute, precision, reweight
from l2rw_tf.step import step_gradients

METHODS, TASK_METHODS = choices.METHODS, choices.TASK_METHODS
# Methods that train on a clean set; in the imbalance task the others get the clean images as
# extra training data, as in the original code (which sets nval = 0 for its baselines).
USES_CLEAN_SET = ("l2rw",)
# Methods whose training batches come from the clean set (uniform weights).
TRAINS_ON_CLEAN_SET = ("clean_only", "finetune")


class TF1Momentum(keras.optimizers.Optimizer):
    """Momentum in the TF1 form of the original code: acc = μ·acc + g; θ −= lr·acc.

    (Keras' SGD keeps velocity = μ·v − lr·g instead, which differs once the learning rate changes.)
    """

    def __init__(self, learning_rate, momentum=0.9, name="tf1_momentum", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.accumulators = [self.add_variable_from_reference(v, "accumulator")
                             for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        accumulator = self.accumulators[self._get_variable_index(variable)]
        self.assign(accumulator, self.momentum * accumulator + gradient)
        self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * accumulator)


def learning_rate(lr, boundaries=None, values=None):
    """The learning rate of the original's fixed schedule: `lr`, then values[k] from 0-based step
    boundaries[k] - 1 on (its scheduler sets the new rate when niter + 1 == boundary, before that
    step). A constant when there are no boundaries.

    Keras' PiecewiseConstantDecay gives values[k] once step > its boundary, and the optimizer
    evaluates it at `iterations` = the 0-based index of the step being taken; so its boundaries
    are ours minus 2.
    """
    if not boundaries:
        return lr
    boundaries, values = list(boundaries), list(values)
    if len(values) != len(boundaries):
        raise ValueError(f"need one learning rate per boundary, got {len(values)} rates for "
                         f"{len(boundaries)} boundaries")
    if any(b < 1 for b in boundaries) or any(a >= b for a, b in zip(boundaries, boundaries[1:])):
        raise ValueError(f"boundaries must be strictly increasing integers >= 1, got {boundaries}")
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(b) - 2 for b in boundaries], [float(lr)] + [float(v) for v in values])


def current_learning_rate(optimizer, steps_done):
    """The rate the optimizer used for its last step (0-based step steps_done - 1)."""
    optimizer = precision.inner_optimizer(optimizer)  # a LossScaleOptimizer's is its inner one's
    lr = optimizer._learning_rate  # noqa: SLF001 -- the schedule object, not its value now
    if callable(lr):
        return float(lr(max(int(steps_done) - 1, 0)))
    return float(tf.convert_to_tensor(optimizer.learning_rate))  # a MirroredVariable too


# Statistics accumulated inside the step between evaluations (sums; see `summarize`).
STAT_NAMES = ("steps", "loss", "mean_loss", "examples", "zero_weights", "minority_weight",
              "noisy_weight", "noisy_count", "clean_weight", "clean_count")


def make_train_step(model, optimizer, config, rng, num_examples=0, jit_compile=False,
                    strategy=None):
    """A `tf.function` doing one step of `config.method`; it adds its statistics to `stats`.

    With `num_examples` > 0 (the size of the training set the batches index into), it also
    accumulates per-example weight statistics in `example_stats` [num_examples, 3]: times seen,
    sum of w_i·n (weight relative to uniform) and times at weight zero (see `example_table`).

    `jit_compile` compiles the step with XLA.

    `strategy` (a tf.distribute strategy; default: the current one, one device outside any
    scope): the step runs on every replica, each on its part of the global batches
    (distribute.local_part), and equals the one-device step (distribute.py); the statistics are
    the global batch's. The model and optimizer must have been created under its scope.

    Under mixed_float16 the optimizer is a `keras.optimizers.LossScaleOptimizer`: the step's
    gradients are those of the losses times its loss scale, which it divides out, or, when a
    gradient overflowed, it skips the step (parameters unchanged) and halves the scale, as Keras'
    `fit` does. A skipped step adds nothing to the statistics.

    The step returns whether its loss, its weights and the updated parameters are all finite (a
    skipped step: whether the parameters are).

    Returns (train_step, stats, example_stats, trace_count) where `trace_count[0]` counts traces.
    """
    stats = tf.Variable(tf.zeros(len(STAT_NAMES)), trainable=False, name="stats")
    example_stats = tf.Variable(tf.zeros([max(int(num_examples), 0), 3]), trainable=False,
                                name="example_stats")
    trace_count = [0]
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():  # the optimizer's variables mirror the model's
        optimizer.build(model.trainable_variables)  # variables created in a trace would retrace

    def accumulate_statistics(noisy, weights, losses, loss):
        # Statistics in float32, whatever the model computes in (float64 models).
        weights, losses, loss = (tf.cast(t, tf.float32) for t in (weights, losses, loss))
        n = tf.cast(tf.size(weights), tf.float32)
        is_zero = tf.cast(tf.equal(weights, 0.0), tf.float32)
        noisy_mask = tf.cast(noisy["is_noisy"], tf.float32)
        minority = tf.cast(tf.equal(noisy["label"], 0), tf.float32)
        stats.assign_add(tf.stack([
            1.0, loss, tf.reduce_mean(losses), n, tf.reduce_sum(is_zero),
            tf.reduce_sum(weights * minority),
            tf.reduce_sum(weights * noisy_mask) * n, tf.reduce_sum(noisy_mask),
            tf.reduce_sum(weights * (1.0 - noisy_mask)) * n, tf.reduce_sum(1.0 - noisy_mask)]))
        if num_examples:
            example_stats.scatter_nd_add(
                tf.reshape(tf.cast(noisy["index"], tf.int64), [-1, 1]),
                tf.stack([tf.ones_like(weights), weights * n, is_zero], axis=1))

    def replica_step(noisy, clean):
        """The step on this replica's part of the global batches (all of them on one device);
        returns the global batch's weights, losses and loss, and how many replicas' gradients
        are not finite."""
        noisy, clean = distribute.local_part((noisy, clean))
        loss_scale = precision.loss_scale(optimizer)  # None: no loss scaling
        grads, weights, losses, loss = step_gradients(
            model, config, (noisy["image"], noisy["label"]), (clean["image"], clean["label"]),
            rng, loss_scale=loss_scale)[:4]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        nonfinite = distribute.replica_sum(1.0 - tf.cast(all_finite(grads), tf.float32)) \
            if loss_scale is not None else tf.constant(0.0)
        return (distribute.replica_gather(weights), distribute.replica_gather(losses),
                distribute.replica_sum(loss), nonfinite)

    @tf.function(jit_compile=jit_compile)
    def train_step(noisy, clean):
        trace_count[0] += 1
        # Every replica returns the same global values: the first one's.
        weights, losses, loss, nonfinite = strategy.experimental_local_results(
            strategy.run(replica_step, args=(noisy, clean)))[0]
        if precision.loss_scale(optimizer) is None:
            accumulate_statistics(noisy, weights, losses, loss)
            return all_finite([loss, weights] + model.trainable_variables)
        # A step whose scaled gradients overflowed was skipped: its loss and weights may be NaN;
        # the parameters, which it left as they were, must not be.
        skipped = nonfinite > 0
        if not skipped:  # a tf.cond
            accumulate_statistics(noisy, weights, losses, loss)
        return tf.logical_and(all_finite(model.trainable_variables),
                              tf.logical_or(skipped, all_finite([loss, weights])))

    return train_step, stats, example_stats, trace_count


def all_finite(tensors):
    """True when no element of `tensors` is NaN or infinite (a diverged step)."""
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(t)))
                          for t in tensors])


def example_table(example_stats, labels, true_labels, is_noisy, label_probability=None):
    """Per-example weight statistics of a run, as rows for `example_weights.csv`: index, given
    label, true label, corrupted flag, times seen, mean weight relative to uniform (1.0 = 1/n)
    over the steps it was in a batch, the fraction of those steps at weight zero and, when given,
    the final model's probability of the given label (a score of its own for examples whose
    weights tie, e.g. the many that L2RW holds at exactly zero)."""
    seen, weight_sum, zeros = np.asarray(example_stats, np.float64).T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_weight, zero_fraction = weight_sum / seen, zeros / seen
    rows = [{"index": i, "label": int(labels[i]), "true_label": int(true_labels[i]),
             "is_noisy": int(is_noisy[i]), "times_seen": int(seen[i]),
             "mean_weight": float(mean_weight[i]), "zero_fraction": float(zero_fraction[i])}
            for i in range(len(labels))]
    if label_probability is not None:
        for row, p in zip(rows, label_probability):
            row["label_probability"] = float(p)
    return rows


def summarize(stat_sums):
    """Averages of the accumulated statistics; per-example weights are relative to uniform
    (1.0 = 1/n), so clean vs corrupted examples compare directly."""
    s = dict(zip(STAT_NAMES, np.asarray(stat_sums, dtype=np.float64)))
    steps = max(s["steps"], 1.0)

    def ratio(a, b):
        return s[a] / s[b] if s[b] > 0 else float("nan")

    return {"loss": s["loss"] / steps, "mean_loss": s["mean_loss"] / steps,
            "zero_weight_fraction": ratio("zero_weights", "examples"),
            "minority_weight_mass": s["minority_weight"] / steps,
            "weight_noisy": ratio("noisy_weight", "noisy_count"),
            "weight_clean": ratio("clean_weight", "clean_count")}


def make_evaluate(model, eval_sets, preprocess, batch_size=1000):
    """Accuracy on every evaluation set (inference mode: BN moving statistics, no dropout)."""
    @tf.function
    def predict(images):
        logits = model(preprocess(images), training=False)
        if logits.shape[-1] == 1:
            return tf.cast(logits[:, 0] > 0.0, tf.int64)
        return tf.argmax(logits, axis=-1)

    def evaluate():
        result = {}
        for name, (images, labels) in eval_sets.items():
            if not len(labels):
                continue
            correct = 0
            for start in range(0, len(labels), batch_size):
                batch = images[start:start + batch_size]
                correct += int(np.sum(predict(batch).numpy() == labels[start:start + batch_size]))
            result[f"{name}_accuracy"] = correct / len(labels)
        return result

    return evaluate


def label_probabilities(model, preprocess, images, labels, batch_size=1000):
    """The model's probability of each example's given label (inference mode): sigmoid of a
    single logit (label 1 = positive), else softmax."""
    @tf.function
    def probability(batch, batch_labels):
        logits = reweight.at_least_float32(model(preprocess(batch), training=False))
        if logits.shape[-1] == 1:
            p = tf.sigmoid(logits[:, 0])
            return tf.where(tf.equal(batch_labels, 1), p, 1.0 - p)
        return tf.gather(tf.nn.softmax(logits), batch_labels, axis=1, batch_dims=1)

    return np.concatenate([np.zeros([0], np.float32)] + [
        probability(images[start:start + batch_size], labels[start:start + batch_size]).numpy()
        for start in range(0, len(labels), batch_size)])


class MetricsLog:
    """metrics.csv plus TensorBoard scalars. On resume, rows past the restored step are dropped,
    so the file reads as if the run had never stopped."""

    def __init__(self, run_dir, resume_step, log=print):
        self.path = os.path.join(run_dir, "metrics.csv")
        self.rows = []
        if os.path.exists(self.path):
            self.rows = self._read(resume_step, log)
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb"))

    def _read(self, resume_step, log):
        """The rows up to `resume_step`; an unreadable file (one whose rows are not all steps
        in order) is kept beside it as metrics.csv.unreadable, with what it says of its rows
        kept and the others named."""
        try:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            steps = [int(r["step"]) for r in rows]
            if steps != sorted(set(steps)) or any(None in r or None in r.values() for r in rows):
                raise ValueError("rows out of order or of other columns")
            return [r for r, step in zip(rows, steps) if step <= resume_step]
        except (OSError, ValueError, KeyError, TypeError, csv.Error) as e:
            aside = set_aside(self.path)
            log(f"{self.path} is unreadable ({type(e).__name__}); kept as {aside}, and the "
                f"rows of the steps up to {resume_step} are missing from the new one")
            return []

    def write(self, row):
        self.rows.append(row)
        try:
            write_csv(self.path, self.rows)  # atomic: never a half-written CSV
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise WriteFailed(f"cannot write {self.path} at step {row['step']} ({reason}); the "
                              f"checkpoints before it are intact: free space there and rerun "
                              f"the same command to resume") from None
        with self.writer.as_default(step=int(row["step"])):
            for key, value in row.items():
                if key != "step":
                    tf.summary.scalar(key, float(value))
        self.writer.flush()


def write_csv(path, rows):
    """Rows (dicts) to a CSV, atomically."""
    with removed_on_failure(path + ".tmp"):
        with open(path + ".tmp", "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
            out.writeheader()
            out.writerows(rows)
        os.replace(path + ".tmp", path)


@contextlib.contextmanager
def removed_on_failure(path):
    """Removes the temporary file `path` when the block fails (a full disk): none is left."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def write_json(path, obj):
    """`obj` as strict JSON, atomically: NaN and infinities (an undefined statistic, such as the
    mean weight of corrupted examples in a run without any) become null."""
    with removed_on_failure(path + ".tmp"):
        with open(path + ".tmp", "w") as f:
            json.dump(finite_or_null(obj), f, indent=2, sort_keys=True, allow_nan=False)
        os.replace(path + ".tmp", path)


def finite_or_null(obj):
    """`obj` with every non-finite float replaced by None, in nested dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


class Diverged(RuntimeError):
    """A step produced a non-finite loss, weight or parameter; nothing of it was saved."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training; a checkpoint of the current step was saved."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class UnreadableCheckpoint(RuntimeError):
    """No checkpoint of the run directory could be restored."""


class WriteFailed(RuntimeError):
    """A checkpoint or a file of the run could not be written (a full disk); partial files were
    removed and the checkpoints before it are intact."""


@contextlib.contextmanager
def checkpoint_written(manager, number):
    """Around the writes of checkpoint `number` of `manager` (the checkpoint and its time
    record): a write that fails (a full disk: ResourceExhaustedError, or an OSError) leaves no
    partial file behind (the `<checkpoint>_temp` directory TensorFlow writes into first, files of
    a checkpoint not in the index, a temporary time record) and raises WriteFailed."""
    prefix = os.path.join(manager.directory, f"ckpt-{number}")
    try:
        yield
    except (tf.errors.OpError, OSError) as e:
        reason = getattr(e, "strerror", None) or (e.message if isinstance(e, tf.errors.OpError)
                                                  else str(e))
        reason = reason.strip().splitlines()[0] if reason.strip() else type(e).__name__
        if prefix not in manager.checkpoints:  # not in the index: nothing of it is kept
            shutil.rmtree(prefix + "_temp", ignore_errors=True)
            for path in glob.glob(glob.escape(prefix) + ".*"):
                with contextlib.suppress(OSError):
                    os.remove(path)
        with contextlib.suppress(OSError):
            os.remove(prefix + ".seconds.json.tmp")
        kept = [p for p in manager.checkpoints if p != prefix]
        raise WriteFailed(
            f"cannot write checkpoint {prefix} ({type(e).__name__}: {reason}); nothing of it was "
            f"kept" + (f", {kept[-1]} is intact" if kept else "") + ": free space there and "
            f"rerun the same command to resume") from None


@contextlib.contextmanager
def signals_deferred():
    """Within the block, SIGINT and SIGTERM only set `received[0]` (the signal number): the loop
    finishes its step and checkpoints it instead of dying in the middle of a write."""
    received = [None]
    if threading.current_thread() is not threading.main_thread():
        yield received  # only the main thread receives signals (and may set handlers)
        return

    def defer(signum, frame):  # noqa: ARG001
        received[0] = signum

    previous = {s: signal.signal(s, defer) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def save_seconds(checkpoint_path, seconds, kept):
    """Writes the run's time so far beside the checkpoint just saved (`<checkpoint>.seconds.json`:
    a file of its own, so that checkpoints from before it still restore), removing those of the
    checkpoints the manager no longer keeps."""
    write_json(checkpoint_path + ".seconds.json", seconds)
    for path in glob.glob(os.path.join(os.path.dirname(checkpoint_path), "*.seconds.json")):
        if path[:-len(".seconds.json")] not in kept:
            with contextlib.suppress(OSError):
                os.remove(path)


def read_seconds(checkpoint_path):
    """The time recorded with `checkpoint_path` by `save_seconds` ({} for none: a fresh run, or a
    checkpoint written before there were such files)."""
    path = checkpoint_path and checkpoint_path + ".seconds.json"
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return {k: float(v) for k, v in json.load(f).items()}


def restore_latest(checkpoint, manager, log):
    """Restores the newest readable checkpoint of `manager` (a truncated file, e.g. from a full
    disk, or an unreadable time record beside it, falls back to the one before, saying so);
    returns its path, or None if there is none."""
    for path in reversed(manager.checkpoints):
        try:
            read_seconds(path)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log(f"the time record {path}.seconds.json of checkpoint {path} is unreadable "
                f"({type(e).__name__}); trying the checkpoint before")
            continue
        try:
            checkpoint.restore(path).assert_consumed()
            return path
        except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
            log(f"checkpoint {path} is unreadable ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); trying the one before")
    if manager.checkpoints:
        raise UnreadableCheckpoint(
            f"no checkpoint in {manager.directory} can be read; move that directory away to "
            f"train the run from the start")
    return None


def recover_checkpoint_index(ckpt_dir, log):
    """When the index `ckpt_dir/checkpoint` is missing or unreadable but checkpoints lie in
    `ckpt_dir`, writes a new index listing them (the unreadable one kept beside it as
    `checkpoint.unreadable`), saying so, so that the run resumes from the newest readable one
    instead of starting over."""
    index = os.path.join(ckpt_dir, "checkpoint")
    numbers = sorted(int(m.group(1)) for m in (
        re.fullmatch(r"ckpt-(\d+)\.index", name) for name in
        (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else ())) if m)
    if not numbers:
        return
    problem = None
    if not os.path.exists(index):
        problem = "is missing"
    else:
        try:
            with data.logger_quiet("tensorflow"):  # TF warns of a parse error, then ignores the file
                state = tf.train.get_checkpoint_state(ckpt_dir)
        except Exception:  # noqa: BLE001 -- an unreadable file: OS or decoding errors
            state = None
        if state is None or not state.all_model_checkpoint_paths:
            problem = "cannot be read"
    if problem is None:
        return
    aside = set_aside(index) if os.path.exists(index) else None
    names = [f"ckpt-{n}" for n in numbers]
    # The manager takes over (and later deletes) only checkpoints newer than the index's last
    # preserved time: their files' times, and a time before them.
    times = [os.path.getmtime(os.path.join(ckpt_dir, name + ".index")) for name in names]
    with data.logger_quiet("tensorflow"):  # the function is deprecated (for the manager's own use)
        tf.compat.v1.train.update_checkpoint_state(
            ckpt_dir, names[-1], all_model_checkpoint_paths=names,
            all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1.0)
    log(f"the checkpoint index {index} {problem}" + (f" (kept as {aside})" if aside else "")
        + f"; rebuilt from the checkpoints in {ckpt_dir} ({', '.join(names)})")


def set_aside(path):
    """Renames an unreadable file `path` to `path`.unreadable (.unreadable.1, ... if taken), never
    over another file; returns the new name."""
    aside, k = path + ".unreadable", 0
    while os.path.exists(aside):
        k += 1
        aside = f"{path}.unreadable.{k}"
    os.replace(path, aside)
    return aside


def train(model, optimizer, train_ds, clean_ds, evaluate, run_dir, num_steps, config,
          eval_interval=100, checkpoint_interval=500, log=print, stop_at_step=None,
          init_fn=None, examples=None, label_probability=None, strategy=None):
    """Trains for `num_steps` (resuming from `run_dir/ckpt` if there is one) and returns the
    final metrics row. `stop_at_step` simulates a crash just after that step (tests).
    `init_fn()` runs when there is nothing to resume (e.g. `finetune` loads its baseline).
    `examples` = (labels, true labels, is_noisy) of the training set the batches index into:
    per-example weight statistics are then kept and written to `example_weights.csv`, with
    `label_probability()` (the final model's probability of each given label) if given.

    A non-finite step raises `Diverged` before anything of it is saved; SIGINT / SIGTERM save a
    checkpoint of the step just finished and raise `Interrupted`.

    `strategy` (tf.distribute; default the current one): the model and optimizer were built
    under its scope, each step runs on all its replicas (`make_train_step`). In a multi-worker
    cluster every worker runs this with the same `run_dir` (a shared file system) and resumes
    from its checkpoints, but only the chief writes there; the others save theirs (every worker
    takes part in a save) into a temporary directory, removed at the end."""
    strategy = strategy or tf.distribute.get_strategy()
    args = (model, optimizer, train_ds, clean_ds, evaluate, run_dir, num_steps, config,
            eval_interval, checkpoint_interval, log, stop_at_step, init_fn, examples,
            label_probability, strategy)
    if not distribute.is_chief(strategy):
        return _train_as_worker(*args)
    return _train(*args, write_dir=run_dir)


def _train_as_worker(*args):
    """`_train` of a non-chief worker: its files go to a temporary directory, removed after."""
    write_dir = tempfile.mkdtemp(prefix="l2rw_worker_")
    try:
        return _train(*args, write_dir=write_dir)
    finally:
        shutil.rmtree(write_dir, ignore_errors=True)


def _train(model, optimizer, train_ds, clean_ds, evaluate, run_dir, num_steps, config,
           eval_interval, checkpoint_interval, log, stop_at_step, init_fn, examples,
           label_probability, strategy, write_dir):
    """`train`, resuming from `run_dir` and writing into `write_dir`."""
    os.makedirs(write_dir, exist_ok=True)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    rng = tf.random.Generator.from_seed(config.seed)
    train_iter, clean_iter = iter(train_ds), iter(clean_ds)
    num_examples = 0 if examples is None else len(examples[0])
    train_step, stats, example_stats, trace_count = make_train_step(
        model, optimizer, config, rng, num_examples, strategy=strategy)
    # Keras does not checkpoint the state of its seed generators (dropout): saved here, so a
    # resumed run draws the same masks. Only when there are any, so older checkpoints still load.
    seed_states = [v.value for v in model.non_trainable_variables if reweight.is_seed_state(v)]
    extra = {"seed_states": seed_states} if seed_states else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, rng=rng,
                                     stats=stats, example_stats=example_stats,
                                     train_iter=train_iter, clean_iter=clean_iter, **extra)
    ckpt_dir = os.path.join(run_dir, "ckpt")
    if write_dir == run_dir:  # the chief's: other workers of a cluster do not write there
        recover_checkpoint_index(ckpt_dir, log)
    try:
        manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    except Exception as e:  # noqa: BLE001 -- a corrupt index file: protobuf or OS errors
        raise UnreadableCheckpoint(f"the checkpoint index {ckpt_dir}/checkpoint cannot be read "
                                   f"({type(e).__name__}); move {ckpt_dir} away to train the "
                                   f"run from the start") from None
    restored = restore_latest(checkpoint, manager, log)
    if restored:
        log(f"resumed from {restored} at step {int(step)}")
    elif init_fn is not None:
        init_fn()
    if write_dir != run_dir:  # a non-chief worker saves beside the chief, into its own directory
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(write_dir, "ckpt"),
                                             max_to_keep=1)
    metrics = MetricsLog(write_dir, int(step), log)

    # Where the time goes: waiting for input, training steps, evaluation and checkpoints, so a
    # run shows whether data or evaluation holds training back. Summed over the sessions of a
    # resumed run, up to the checkpoint each one resumed from (`save_seconds`).
    seconds = dict.fromkeys(("train", "input", "step", "eval", "checkpoint"), 0.0)
    seconds.update(read_seconds(restored))
    earlier = seconds["train"]
    start_time, start_step, row = time.time(), int(step), None
    with signals_deferred() as received:
        while int(step) < num_steps:
            t0 = time.perf_counter()
            batches = next(train_iter), next(clean_iter)
            t1 = time.perf_counter()
            finite = train_step(*batches)
            step.assign_add(1)
            current = int(step)  # waits for the step to finish
            seconds["input"] += t1 - t0
            seconds["step"] += time.perf_counter() - t1
            if not bool(finite):
                kept = manager.latest_checkpoint
                raise Diverged(
                    f"training diverged at step {current}: the loss, an example weight or a "
                    f"parameter is NaN or infinite; nothing of it was saved"
                    + (f", the last good checkpoint {kept} is kept" if kept else "")
                    + "; lower --lr (or check the data)")
            if current % eval_interval == 0 or current == num_steps:
                t0 = time.perf_counter()
                row = {"step": current, "lr": current_learning_rate(optimizer, current),
                       **summarize(stats.numpy()), **evaluate()}
                if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
                    row["loss_scale"] = float(optimizer.scale_loss(1.0))  # halved per skipped step
                seconds["eval"] += time.perf_counter() - t0
                stats.assign(tf.zeros_like(stats))
                metrics.write(row)
                rate = (current - start_step) / max(time.time() - start_time, 1e-9)
                log(f"step {current}/{num_steps}  loss {row['loss']:.4f}  " + "  ".join(
                    f"{k} {v:.4f}" for k, v in row.items() if k.endswith("accuracy"))
                    + f"  ({rate:.1f} steps/s)")
            if (current % checkpoint_interval == 0 or current == num_steps
                    or received[0] is not None):
                t0 = time.perf_counter()
                with checkpoint_written(manager, current):
                    saved = manager.save(checkpoint_number=current)
                    seconds["checkpoint"] += time.perf_counter() - t0
                    seconds["train"] = earlier + time.time() - start_time
                    save_seconds(saved, seconds, manager.checkpoints)
            if received[0] is not None:
                name = signal.Signals(received[0]).name
                raise Interrupted(received[0], f"stopped by {name} after step {current} of "
                                  f"{num_steps}; saved {manager.latest_checkpoint}, rerun the "
                                  f"same command to resume")
            if stop_at_step is not None and current >= stop_at_step:
                raise KeyboardInterrupt(f"simulated crash after step {current}")
    if row is None:  # already finished before this call
        row = metrics.rows[-1] if metrics.rows else {"step": int(step), **evaluate()}
    if examples is not None:
        write_csv(os.path.join(write_dir, "example_weights.csv"),
                  example_table(example_stats.numpy(), *examples,
                                label_probability=label_probability and label_probability()))
    row = {k: float(v) for k, v in row.items()}
    row["step"] = int(row["step"])
    seconds["train"] = earlier + time.time() - start_time
    row.update({f"{name}_seconds": value for name, value in seconds.items()})
    row["traces"] = trace_count[0]
    return row
