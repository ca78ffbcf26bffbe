"""Any tfds image-classification dataset by name (issue 16): `--dataset=<tfds name>` for every
dataset with an `image` Image and a `label` ClassLabel feature and splits train and test, prepared
in --data_dir or prepared there on first use; anything else a one-line error.

fashion_mnist itself is not available offline, so these tests register tiny generated tfds
datasets in this module (`tfds.builder("tiny_gray_images", data_dir=...)` finds them by name) and
let tfds prepare them in a temporary data directory: the same builder, writer and reader code
path as a downloaded dataset, only the source files are generated."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import flags

from conftest import REPO
from l2rw_tf import config, data, main

SIZE = 12  # tiny images, so that the CLI run below costs little more than tracing LeNet
NUM_CLASSES = 3


def tiny_image(index, channels):
    """A random SIZE x SIZE image whose first pixel holds `index`, so its order is visible."""
    image = np.random.default_rng(index).integers(0, 256, (SIZE, SIZE, channels), np.uint8)
    image[0, 0, 0] = index
    return image


class TinyGrayImages(tfds.core.GeneratorBasedBuilder):
    """60 train / 20 test 12x12 grayscale images of 3 classes. Examples are keyed by file name,
    as many tfds builders do, not by source index as tfds' mnist / cifar10 / cifar100."""
    VERSION = tfds.core.Version("1.0.0")
    CHANNELS = 1
    SPLITS = {"train": 60, "test": 20}

    def features(self):
        return {"image": tfds.features.Image(shape=(SIZE, SIZE, self.CHANNELS)),
                "label": tfds.features.ClassLabel(names=["ant", "bee", "cat"])}

    def _info(self):
        return tfds.core.DatasetInfo(builder=self,
                                     features=tfds.features.FeaturesDict(self.features()))

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the examples are generated
        return {split: self._generate_examples(count) for split, count in self.SPLITS.items()}

    def _generate_examples(self, count):
        for index in range(count):
            example = {"image": tiny_image(index, self.CHANNELS), "label": index % NUM_CLASSES}
            yield f"image_{index:03d}.png", {k: v for k, v in example.items()
                                             if k in self.features()}


class TinyRgbImages(TinyGrayImages):
    """The same, in RGB."""
    CHANNELS = 3


class TinyCaptionedImages(TinyGrayImages):
    """Images with a caption instead of a label: not a classification dataset."""
    def features(self):
        return {"image": tfds.features.Image(shape=(SIZE, SIZE, 1)),
                "caption": tfds.features.Text()}


class TinyScoredImages(TinyGrayImages):
    """Images whose `label` is a real number, not a class."""
    def features(self):
        return {"image": tfds.features.Image(shape=(SIZE, SIZE, 1)),
                "label": tfds.features.Scalar(dtype=np.float32)}


class TinyVariableSizeImages(TinyGrayImages):
    """Images of no fixed size (as many photo datasets): they cannot be stacked into one array."""
    def features(self):
        return {"image": tfds.features.Image(shape=(None, None, 1)),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES)}


class TinyImagesWithoutTest(TinyGrayImages):
    """Splits train and validation, no test."""
    SPLITS = {"train": 60, "validation": 20}


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty tfds data directory of our own (never the shared one), and a private cache."""
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tfds"
    path.mkdir()
    return str(path)


def stored_order(name, split, data_dir):
    """The first pixel (the generated index) of each example of `split` as tfds stores it."""
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return np.array([example["image"][0, 0, 0] for example in tfds.as_numpy(ds)])


@pytest.mark.parametrize("name,channels", [("tiny_gray_images", 1), ("tiny_rgb_images", 3)])
def test_any_tfds_image_classification_dataset_loads_by_name(tmp_path, data_dir, name, channels):
    (train_x, train_y), (test_x, test_y), num_classes = data.load_dataset(name, data_dir)
    assert num_classes == NUM_CLASSES
    assert train_x.shape == (60, SIZE, SIZE, channels) and train_x.dtype == np.uint8
    assert test_x.shape == (20, SIZE, SIZE, channels) and train_y.dtype == np.int64
    assert tfds.builder(name, data_dir=data_dir).is_prepared()  # prepared on first use
    for images, labels, count in ((train_x, train_y, 60), (test_x, test_y, 20)):
        index = images[:, 0, 0, 0].astype(int)
        assert sorted(index) == list(range(count))
        np.testing.assert_array_equal(labels, index % NUM_CLASSES)
        for i in (0, count - 1):  # every pixel, not only the first
            np.testing.assert_array_equal(images[i], tiny_image(index[i], channels))
    # tfds' stored order, as it reads the files: no source-order restoration for datasets that
    # are not keyed by source index (that is mnist / cifar10 / cifar100 only).
    np.testing.assert_array_equal(train_x[:, 0, 0, 0], stored_order(name, "train", data_dir))
    np.testing.assert_array_equal(test_x[:, 0, 0, 0], stored_order(name, "test", data_dir))
    assert list(train_x[:, 0, 0, 0]) != list(range(60))  # tfds did shuffle: the check can fail

    cached = sorted((tmp_path / "cache").glob(f"tfds_{name}_*.npz"))
    assert len(cached) == 2  # train and test, decoded once
    again = data.load_dataset(name, data_dir)
    np.testing.assert_array_equal(again[0][0], train_x)
    np.testing.assert_array_equal(again[1][1], test_y)
    assert sorted((tmp_path / "cache").iterdir()) == cached


def cli_args(name, data_dir, logdir):
    return ["l2rw", "--task=noisy", f"--dataset={name}", f"--data_dir={data_dir}",
            "--model=lenet", "--num_steps=2", "--eval_interval=2", "--num_clean=10",
            "--num_hyper_val=10", "--batch_size=10", f"--logdir={logdir}"]


@pytest.mark.parametrize("name,channels", [("tiny_gray_images", 1), ("tiny_rgb_images", 3)])
def test_cli_trains_on_a_tfds_dataset_by_name(tmp_path, data_dir, name, channels):
    run = tmp_path / "run"
    final = main.run(cli_args(name, data_dir, run))
    assert final["step"] == 2 and np.isfinite(final["loss"])
    recorded = json.loads((run / "flags.json").read_text())
    assert recorded["dataset"] == name
    assert recorded["input_shape"] == [SIZE, SIZE, channels]
    assert recorded["pixel_range"] == [-1.0, 1.0]  # every dataset but mnist, as --dataset says
    assert final["data"]["dataset"] == name and final["data"]["num_classes"] == NUM_CLASSES
    assert final["data"]["train"] == 40 and final["data"]["test"] == 20


@pytest.mark.parametrize("name,message", [
    ("tiny_captioned_images", "features caption, image"),
    ("tiny_scored_images", "features image, label"),
])
def test_a_dataset_without_image_and_label_is_a_one_line_error(tmp_path, data_dir, name,
                                                                message):
    with pytest.raises(data.DataError) as error:
        data.load_dataset(name, data_dir)
    text = str(error.value)
    assert "\n" not in text
    assert f"tfds dataset {name!r} is not an image-classification dataset ({message}" in text
    assert "--dataset needs features image and label" in text
    # Refused from the dataset's description, before anything is downloaded or prepared.
    assert not tfds.builder(name, data_dir=data_dir).is_prepared()
    # Through the CLI: the same line, and no run directory.
    with pytest.raises(main.UsageError) as usage:
        main.run(cli_args(name, data_dir, tmp_path / "run"))
    assert str(usage.value) == text
    assert not (tmp_path / "run").exists()


def test_images_of_no_fixed_size_are_a_one_line_error(data_dir):
    with pytest.raises(data.DataError) as error:
        data.load_dataset("tiny_variable_size_images", data_dir)
    text = str(error.value)
    assert "\n" not in text and "'tiny_variable_size_images'" in text
    assert "(None, None, 1)" in text and "one size" in text


def test_a_dataset_without_test_split_says_which_splits_it_has(data_dir):
    with pytest.raises(data.DataError) as error:
        data.load_dataset("tiny_images_without_test", data_dir)
    text = str(error.value)
    assert "\n" not in text
    assert "has no 'test' split (splits: train, validation)" in text
    assert "--dataset needs splits train and test" in text


def test_unknown_name_exits_2_with_one_line_at_once(tmp_path):
    """An unknown name fails in tfds.builder, before any download (no minutes of retries)."""
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "l2rw_tf.main", "--task=noisy", "--dataset=nosuchdataset",
         f"--data_dir={data_dir}", "--model=lenet", f"--logdir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --dataset=nosuchdataset is unknown"), result.stderr[-2000:]
    assert "tfds" in last
    assert "downloading" not in result.stderr
    assert elapsed < 120  # TensorFlow's import and tfds' registry, not a download's retries
    assert list(data_dir.iterdir()) == [] and not (tmp_path / "run").exists()


def test_a_misspelt_name_suggests_the_right_one(data_dir):
    with pytest.raises(data.DataError) as error:
        data.load_dataset("fashion_minst", data_dir)
    assert "\n" not in str(error.value)
    assert "did you mean fashion_mnist?" in str(error.value)


@pytest.mark.parametrize("name", ["fashion mnist", "huggingface:mnist", "mnist/", "-x", ""])
def test_a_malformed_name_is_refused_before_tensorflow(tmp_path, name):
    with pytest.raises(main.UsageError) as error:
        main.run(["l2rw", "--task=noisy", f"--dataset={name}", "--model=lenet",
                  f"--logdir={tmp_path / 'run'}"])
    text = str(error.value)
    assert "\n" not in text and text.startswith(f"--dataset={name} is not")
    assert "folder:PATH" in text


def test_a_tfds_name_passes_the_flag_check():
    """Names with a config or version pass the check that needs no TensorFlow."""
    for name in ("fashion_mnist", "cifar10:3.0.2", "cifar10_corrupted/brightness_1",
                 "svhn_cropped/default:3.*.*", "folder:/some/images"):
        main.FLAGS.unparse_flags()
        main.FLAGS(["l2rw", "--task=noisy", f"--dataset={name}", "--model=lenet"])
        config.from_flags(main.FLAGS)


def test_dataset_labels_name_any_tfds_dataset():
    assert data.dataset_label("fashion_mnist") == "fashion_mnist"
    assert data.dataset_label("mnist") == "MNIST" and data.dataset_label("cifar100") == "CIFAR-100"


def test_dataset_help_documents_any_tfds_dataset_and_the_pixel_range():
    text = " ".join(flags.FLAGS["dataset"].help.split()).lower()
    assert "any tfds image-classification dataset" in text
    assert "[0, 1]" in text and "[-1, 1]" in text
