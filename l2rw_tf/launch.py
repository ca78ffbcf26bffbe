"""Runs a RunConfig in its run directory: `launch(config) -> final metrics` (result.json).

    from l2rw_tf.config import RunConfig
    from l2rw_tf.launch import launch
    final = launch(RunConfig(task="imbalance", num_steps=200, logdir="runs/try"))

Why apart from main.py: a run started from Python takes the same path as one started from the
command line, which only parses its flags into a RunConfig and calls this. The order is the
point: every check that needs no data (config.py, rundir.py) comes before TensorFlow is
imported; the run directory is created only once the data and the model are built; rerunning a
run resumes it, and a finished run is reported, not rerun. Faults end as one line: a
`UsageError` (bad input, divergence, a full disk: exit status 2 on the command line) or
`Stopped` (a signal: 128 + its number), the checkpoints intact.
"""
import contextlib
import errno
import json
import os

from l2rw_tf import config as run_config
from l2rw_tf import rundir
from l2rw_tf.config import UsageError

# A write that fails for want of space (ENOSPC, EDQUOT, EFBIG): one line, and a rerun resumes.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# How the data is scaled: MNIST in [0, 1] as the original MNIST code, everything else in
# [-1, 1] as its CIFAR code.
PIXEL_RANGES = {"to_float": [0.0, 1.0], "to_signed": [-1.0, 1.0]}


class Stopped(Exception):
    """The run was stopped by a signal (exit status 128 + signal number)."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


def launch(config, stop_at_step=None):
    """Trains `config` in its run directory (resuming it), or reports it if it is finished;
    returns the final metrics as written to result.json."""
    run_config.check_machine(config)
    run_dir = config.run_dir
    result_path = os.path.join(run_dir, "result.json")
    rundir.check_run_dir(run_dir, config)
    if os.path.exists(result_path):
        with open(result_path) as fh:
            text = fh.read()
        print(f"{run_dir} is complete: {text}")
        return json.loads(text)
    if run_config.multi_worker_chief(config):  # the other workers only read the chief's run
        rundir.check_lock(run_dir)
    from l2rw_tf import precision  # imports Keras: only after the checks that need none
    with precision.global_policy(config.mixed_precision):  # the model is built under it
        return _train(config, run_dir, result_path, stop_at_step)


def _train(config, run_dir, result_path, stop_at_step):
    """Builds the experiment of `config` and trains it in `run_dir`."""
    import l2rw_tf
    from l2rw_tf import train
    strategy, experiment, init_fn = _start(config)
    replicas = strategy.num_replicas_in_sync
    flags_path = rundir.prepare_run_dir(run_dir, config)
    # The inputs and the data directory are recorded beside the settings (not compared on
    # resume: they follow from them, and the data may move).
    inputs = {"input_shape": [int(d) for d in experiment.data.input_shape],
              "pixel_range": PIXEL_RANGES[experiment.preprocess.__name__],
              "data_dir": run_config.data_location(config)}
    chief = run_config.multi_worker_chief(config)
    # A multi-worker cluster's other workers neither lock nor write the run directory.
    with rundir.run_dir_lock(run_dir) if chief else contextlib.nullcontext():
        if chief:
            train.write_json(flags_path, {**run_config.record(config), **inputs})
        print(f"run directory {run_dir}: {experiment.data.info}; inputs "
              f"{inputs['input_shape']} scaled to {inputs['pixel_range']}; {replicas} "
              f"replica(s)", flush=True)
        final = _fit(config, experiment, run_dir, strategy, init_fn, stop_at_step)
        final["data"] = {**experiment.data.info, **inputs}
        final["runtime"] = l2rw_tf.runtime()
        final["replicas"] = replicas
        if chief:
            with _disk_full(lambda e: f"cannot write {result_path} ({e.strerror}); training is "
                                      f"finished and checkpointed: free space there and rerun "
                                      f"the same command to write it"):
                train.write_json(result_path, final)
    print(f"final: {json.dumps(train.finite_or_null(final))}", flush=True)
    return final


def _start(config):
    """The tf.distribute strategy, the experiment built under it (seeded) and, for finetune,
    the function that restores the baseline's weights (else None)."""
    import keras
    import tensorflow as tf
    from l2rw_tf import distribute
    from l2rw_tf.experiment import build, finetune_source
    if config.cpu_devices:  # before anything initialises TensorFlow's devices
        distribute.use_cpu_devices(config.cpu_devices)
    strategy = distribute.make_strategy(config.distribute)
    source = finetune_source(config) if config.method == "finetune" else None
    keras.utils.set_random_seed(config.training_seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    with strategy.scope():  # model and optimizer variables mirrored on every replica
        experiment = build(config)
    replicas = strategy.num_replicas_in_sync
    clean_batch = experiment.clean_ds.element_spec["label"].shape[0]
    for name, size in (("--batch_size", config.batch_size), ("the clean batch size", clean_batch)):
        if size % replicas:
            raise UsageError(f"{name}={size} does not split evenly over the {replicas} replicas "
                             f"of --distribute={config.distribute}; make it a multiple of "
                             f"{replicas}")
    if source is None:
        return strategy, experiment, None

    def init_fn():
        tf.train.Checkpoint(model=experiment.model).restore(source).expect_partial() \
            .assert_existing_objects_matched()
        print(f"finetuning from {source}", flush=True)

    return strategy, experiment, init_fn


def _fit(config, experiment, run_dir, strategy, init_fn, stop_at_step):
    """train.train on the experiment, its faults as one-line errors."""
    from l2rw_tf import train
    from l2rw_tf.experiment import training_examples
    e = experiment
    examples = training_examples(config, e.data)
    label_probability = examples and (lambda: train.label_probabilities(
        e.model, e.preprocess, e.data.train_images, e.data.train_labels,
        batch_size=config.eval_batch_size))
    try:
        with _disk_full(lambda error: f"cannot write {error.filename or 'a file of the run'} "
                                      f"({error.strerror}); the checkpoints are intact: free "
                                      f"space there and rerun the same command to resume"):
            return train.train(
                e.model, e.optimizer, e.train_ds, e.clean_ds, e.evaluate, run_dir,
                config.num_steps, e.step, eval_interval=config.eval_interval,
                checkpoint_interval=config.checkpoint_interval,
                log=lambda msg: print(msg, flush=True), stop_at_step=stop_at_step,
                init_fn=init_fn, examples=examples, label_probability=label_probability,
                strategy=strategy)
    except (train.Diverged, train.UnreadableCheckpoint, train.WriteFailed) as error:
        raise UsageError(str(error)) from None
    except train.Interrupted as error:
        raise Stopped(error.signum, str(error)) from None


@contextlib.contextmanager
def _disk_full(message):
    """A write that fails for want of space as a one-line UsageError, `message(error)`; any
    other OSError as it is."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        raise UsageError(message(error)) from None
