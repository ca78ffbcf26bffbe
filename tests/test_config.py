"""A run is a value (config.RunConfig): the same from the command line and from Python, valid
by construction, written to flags.json and read back, older run directories included."""
import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from conftest import REPO
from l2rw_tf import config, main
from l2rw_tf.config import RunConfig, UsageError


def from_command_line(*args):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["l2rw", *args])
        return config.from_flags(flags.FLAGS)
    finally:
        flags.FLAGS.unparse_flags()


def test_every_setting_is_a_flag_with_its_default_and_help():
    defined = {f.name: f for f in flags.FLAGS.get_flags_for_module(main)}
    assert set(defined) == {f.name for f in config.FIELDS}
    for field in config.FIELDS:
        assert defined[field.name].default == field.default, field.name
        assert defined[field.name].help.endswith(field.metadata["help"]), field.name


def test_the_same_run_from_the_command_line_and_from_python():
    """Defaults resolved alike: Table 1's CIFAR-10 setting from three settings."""
    python = RunConfig(dataset="cifar10", noise="uniform", ratio=0.4)
    assert python == from_command_line("--dataset=cifar10", "--noise=uniform", "--ratio=0.4")
    assert (python.model, python.num_steps, python.lr_boundaries, python.lr_values,
            python.num_clean, python.augment) == ("wrn28_10", 60000, (40000, 50000),
                                                  (0.01, 0.001), 1000, True)
    assert RunConfig(task="imbalance", momentum=0) == RunConfig(task="imbalance", momentum=0.0)


def test_a_config_is_frozen_and_valid_by_construction():
    run = RunConfig(task="imbalance")
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 1
    with pytest.raises(ValueError, match=r"--pos_ratio=1.5 must be strictly between 0 and 1"):
        RunConfig(task="imbalance", pos_ratio=1.5)
    with pytest.raises(UsageError, match="--ratio applies to --task=noisy only"):
        dataclasses.replace(run, ratio=0.2)
    baseline = dataclasses.replace(RunConfig(dataset="cifar10"), method="baseline")
    assert baseline.method == "baseline" and baseline.model == "wrn28_10"


def test_a_task_setting_given_to_the_other_task_is_refused_even_at_its_default():
    """The command line knows which flags were given: --ratio=0.4 is the default, but given."""
    with pytest.raises(UsageError, match="--ratio applies to --task=noisy only"):
        from_command_line("--task=imbalance", "--ratio=0.4")


def test_flags_json_round_trip_and_resume():
    run = RunConfig(dataset="cifar10", noise="background", method="baseline", seed=3)
    recorded = {**config.record(run), "input_shape": [32, 32, 3], "pixel_range": [-1.0, 1.0],
                "data_dir": None}
    saved = json.loads(json.dumps(recorded))
    assert config.from_record(saved) == run
    assert config.resume_changes(saved, run) == {}
    assert "meta_grad" not in saved  # a baseline resumes under any --meta_grad
    assert saved["mixed_precision"] is None and saved["sync_batch_norm"] is None
    changed = config.resume_changes(saved, dataclasses.replace(run, ratio=0.2))
    assert changed == {"ratio": (0.4, 0.2)}


def test_a_run_directory_of_an_earlier_version_is_read_and_resumes():
    """flags.json from before --train_seed, --mixed_precision, --sync_batch_norm and
    --original_eval_draws: those settings are unset, so the run is today's default run."""
    old = {"task": "imbalance", "dataset": "mnist", "model": "lenet", "method": "l2rw",
           "meta_grad": "jvp", "seed": 0, "num_steps": 8000, "batch_size": 100,
           "clean_batch_size": None, "lr": 0.001, "lr_boundaries": None, "lr_values": None,
           "momentum": 0.9, "weight_decay": 0.0, "clean_weight_decay": True,
           "hard_mining_pool": 500, "pos_ratio": 0.995, "ntrain": 5000, "nval": 10,
           "ntest": 500}
    run = config.from_record(old)
    assert run == RunConfig(task="imbalance")
    assert config.resume_changes(old, run) == {}
    assert config.resume_changes(old, dataclasses.replace(run, train_seed=1)) == {
        "train_seed": (None, 1)}
    with pytest.raises(UsageError, match="flags.json has a flag --colour this version"):
        config.from_record({**old, "colour": "red"})


def test_the_config_needs_no_tensorflow():
    code = textwrap.dedent("""
        import sys
        from l2rw_tf import config
        run = config.from_record(config.record(config.RunConfig(dataset="cifar10")))
        print(run.model, "tensorflow" in sys.modules, "keras" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert out.stdout.split() == ["wrn28_10", "False", "False"], out.stderr[-2000:]
