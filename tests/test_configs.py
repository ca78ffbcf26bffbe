"""Every flagfile runs end to end: the paper-scale configs for 20 steps on `tfds.testing.mock_data`
(real networks and settings; only the batch, the hyper-validation split and the evaluation sets
are shrunk so that a CPU can do it), the CPU-scale configs as they are."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import REPO
from l2rw_tf import main

PAPER_CONFIGS = ["cifar10_uniform_wrn28_10", "cifar100_uniform_wrn28_10",
                 "cifar10_background_resnet32", "cifar100_background_resnet32",
                 "mnist_background_lenet"]


def fake_splits(train_size, test_size):
    """A mock `_as_dataset`: random images, labels cycling through the classes (so every class
    has enough clean examples), `train_size` / `test_size` examples per split."""
    def as_dataset(self, split, **kwargs):
        del kwargs
        n = train_size if str(split).startswith("train") else test_size
        shape = self.info.features["image"].shape
        classes = self.info.features["label"].num_classes
        rng = np.random.default_rng(0 if str(split).startswith("train") else 1)
        return tf.data.Dataset.from_tensor_slices({
            "image": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
            "label": np.arange(n, dtype=np.int64) % classes})
    return as_dataset


def data_dir(tmp_path):
    """An (empty) tfds data directory: one that does not exist is refused as a mistyped path."""
    path = tmp_path / "tfds"
    path.mkdir(exist_ok=True)
    return str(path)


def run_on_mock_data(tmp_path, flagfile, train_size, test_size, *overrides):
    with tfds.testing.mock_data(as_dataset_fn=fake_splits(train_size, test_size)):
        final = main.run(["l2rw", f"--flagfile={flagfile}", "--num_steps=20",
                          "--eval_interval=20", "--checkpoint_interval=20", *overrides,
                          "--data_dir=" + data_dir(tmp_path), f"--logdir={tmp_path / 'run'}"])
    assert final["step"] == 20 and final["traces"] == 1
    assert np.isfinite(final["loss"]) and 0.0 <= final["test_accuracy"] <= 1.0
    assert (tmp_path / "run" / "example_weights.csv").exists()
    return final


# The ResNet-32 / WRN-28-10 ones take a minute or two each on 2 cores (mostly tracing): `slow`.
@pytest.mark.parametrize("config", [
    pytest.param(c, marks=() if c.startswith("mnist") else pytest.mark.slow)
    for c in PAPER_CONFIGS])
def test_paper_config_runs_20_steps_on_mock_data(tmp_path, config):
    """The paper's networks and recipe; batches of 2 and 10 hyper-validation images (a WRN-28-10
    step at batch 100 takes minutes on a CPU). 1,000 clean + 10 hyper-validation + 290 noisy
    training images, 20 test images."""
    run_on_mock_data(tmp_path, REPO / "configs" / f"{config}.flags", 1300, 20,
                     "--batch_size=2", "--clean_batch_size=2", "--num_hyper_val=10")


CPU_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*_cpu.flags"))


def test_every_paper_config_has_a_cpu_variant():
    assert CPU_CONFIGS == sorted(f"{c}_cpu" for c in PAPER_CONFIGS)


@pytest.mark.parametrize("config", [
    pytest.param(c, marks=() if c.startswith("mnist") else pytest.mark.slow)
    for c in CPU_CONFIGS])
def test_cpu_config_runs_on_mock_data(tmp_path, config):
    """As written (20 steps); the JPEG-copy configs on mock CIFAR-10 instead of the folder."""
    flagfile = REPO / "configs" / f"{config}.flags"
    overrides = ["--dataset=cifar10"] if "--dataset=folder:" in flagfile.read_text() else []
    run_on_mock_data(tmp_path, flagfile, 7100, 50, *overrides)


def test_finetune_starts_from_its_baseline_and_other_methods_run(tmp_path, capsys):
    """baseline -> finetune (at a negligible learning rate it must keep the baseline's accuracy,
    so the weights really were loaded), then clean_only and weighted, on mock MNIST."""
    flagfile = REPO / "configs" / "mnist_background_lenet_cpu.flags"

    def run(logdir, *args):
        with tfds.testing.mock_data(as_dataset_fn=fake_splits(1300, 200)):
            return main.run(["l2rw", f"--flagfile={flagfile}", "--num_hyper_val=10",
                             "--eval_interval=5", "--checkpoint_interval=5", *args,
                             "--data_dir=" + data_dir(tmp_path), f"--logdir={logdir}"])

    base = run(tmp_path / "base", "--method=baseline", "--num_steps=10")
    tuned = run(tmp_path / "ft", "--method=finetune", f"--finetune_from={tmp_path / 'base'}",
                "--finetune_lr=1e-12", "--num_steps=5")
    assert "finetuning from" in capsys.readouterr().out
    assert tuned["test_accuracy"] == base["test_accuracy"]
    base_ckpt = tf.train.latest_checkpoint(str(tmp_path / "base" / "ckpt"))
    tuned_ckpt = tf.train.latest_checkpoint(str(tmp_path / "ft" / "ckpt"))
    # (tf.train.Checkpoint files each Keras variable once, the trainables under the optimizer)
    names = [n for n, _ in tf.train.list_variables(base_ckpt) if "_trainable_variables/" in n]
    assert names
    for name in names:  # 10 steps at lr 0.01 moved the baseline away from the init both share
        np.testing.assert_allclose(tf.train.load_variable(tuned_ckpt, name),
                                   tf.train.load_variable(base_ckpt, name), atol=1e-6)
    assert not (tmp_path / "ft" / "example_weights.csv").exists()  # trains on the clean set
    with pytest.raises(main.UsageError, match="--seed"):
        run(tmp_path / "ft2", "--method=finetune", f"--finetune_from={tmp_path / 'base'}",
            "--seed=1", "--num_steps=5")
    for method in ("clean_only", "weighted"):
        final = run(tmp_path / method, f"--method={method}", "--num_steps=5")
        assert final["step"] == 5 and np.isfinite(final["loss"])
