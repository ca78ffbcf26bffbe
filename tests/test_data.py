"""MNIST class-imbalance construction: exact counts, disjoint splits, determinism; pipelines;
the tfds decode cache."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from l2rw_tf import data


@pytest.fixture(scope="module")
def mnist_arrays():
    return data.load_tfds("mnist", "train"), data.load_tfds("mnist", "test")


@pytest.mark.parametrize("pos_ratio,fours,nines", [
    (0.9, 495, 4495), (0.95, 245, 4745), (0.98, 95, 4895), (0.99, 45, 4945), (0.995, 20, 4970)])
def test_exact_class_counts(mnist_arrays, pos_ratio, fours, nines):
    d = data.mnist_imbalance(pos_ratio, ntrain=5000, nval=10, ntest=500, seed=0,
                             arrays=mnist_arrays)
    assert np.bincount(d.train_labels, minlength=2).tolist() == [fours, nines]
    assert np.bincount(d.clean_labels, minlength=2).tolist() == [5, 5]
    assert np.bincount(d.eval_sets["test"][1], minlength=2).tolist() == [250, 250]
    # Labels are what the source says: 4 -> 0, 9 -> 1.
    source_digits = mnist_arrays[0][1][d.train_source]
    np.testing.assert_array_equal(source_digits, np.where(d.train_labels == 0, 4, 9))


def test_clean_set_is_disjoint_from_training(mnist_arrays):
    d = data.mnist_imbalance(0.99, seed=3, arrays=mnist_arrays)
    assert not set(d.train_source) & set(d.clean_source)
    assert len(set(d.train_source)) == len(d.train_source)  # no duplicates either
    np.testing.assert_array_equal(d.clean_images, mnist_arrays[0][0][d.clean_source])


def test_deterministic_by_seed(mnist_arrays):
    a = data.mnist_imbalance(0.995, seed=7, arrays=mnist_arrays)
    b = data.mnist_imbalance(0.995, seed=7, arrays=mnist_arrays)
    c = data.mnist_imbalance(0.995, seed=8, arrays=mnist_arrays)
    np.testing.assert_array_equal(a.train_source, b.train_source)
    np.testing.assert_array_equal(a.eval_sets["test"][0], b.eval_sets["test"][0])
    assert not np.array_equal(a.train_source, c.train_source)


def test_no_clean_set_gives_the_whole_budget_to_training(mnist_arrays):
    d = data.mnist_imbalance(0.995, nval=0, arrays=mnist_arrays)
    assert np.bincount(d.train_labels).tolist() == [25, 4975]


@pytest.mark.parametrize("kwargs,message", [
    ({"pos_ratio": 1.0}, "pos_ratio"), ({"nval": 3}, "nval"), ({"ntest": 7}, "ntest"),
    ({"nval": 60}, "minority"), ({"ntrain": 500000, "pos_ratio": 0.5}, "only")])
def test_impossible_requests_raise(mnist_arrays, kwargs, message):
    with pytest.raises(data.DataError, match=message):
        data.mnist_imbalance(**kwargs, arrays=mnist_arrays)


def test_example_dataset_epochs_cover_every_index():
    labels = np.arange(10) % 2
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    ds = data.example_dataset(images, labels, batch_size=5, seed=0)
    batches = list(ds.take(4).as_numpy_iterator())
    for epoch in (batches[:2], batches[2:]):  # shuffled anew each epoch, each index once
        index = np.concatenate([b["index"] for b in epoch])
        assert sorted(index) == list(range(10))
    np.testing.assert_allclose(batches[0]["image"].ravel(), batches[0]["index"] / 255.0)
    assert batches[0]["image"].dtype == np.float32


def test_class_balanced_dataset_is_balanced():
    labels = np.array([0] * 5 + [1] * 995)
    images = np.zeros((1000, 1, 1, 1), np.uint8)
    ds = data.class_balanced_dataset(images, labels, batch_size=100, seed=0)
    mean = np.mean([b["label"].mean() for b in ds.take(20).as_numpy_iterator()])
    assert 0.4 < mean < 0.6


def test_tfds_decode_cache_serves_real_data_only(tmp_path, monkeypatch):
    """Real MNIST is decoded once and then read from the cache; under tfds.testing.mock_data
    the cache is neither written nor read (fake examples must never reach a real run)."""
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    images, labels = data.load_tfds("mnist", "test")
    cached = sorted((tmp_path / "cache").glob("tfds_mnist_*_test_*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as z:
        np.testing.assert_array_equal(z["images"], images)
        np.testing.assert_array_equal(z["labels"], labels)
    # Served from the cache: a marked copy comes back.
    marked = images.copy()
    marked[0, 0, 0, 0] = 123
    np.savez(cached[0], images=marked, labels=labels)
    assert data.load_tfds("mnist", "test")[0][0, 0, 0, 0] == 123
    with tfds.testing.mock_data(num_examples=7):
        fake_images, _ = data.load_tfds("mnist", "test")
    assert len(fake_images) == 7
    assert sorted((tmp_path / "cache").iterdir()) == cached


def test_cache_writes_started_together_do_not_clash(tmp_path, monkeypatch):
    """Two runs decoding the same data write the same cache file; the second finishing while the
    first is still writing must not take the first's temporary file away (it once did)."""
    target = tmp_path / "cache" / "arrays.npz"
    real_savez = np.savez
    nested = []

    def savez_with_a_second_writer(file, **arrays):
        real_savez(file, **arrays)
        if not nested:  # before this write is moved into place, another writer saves the path
            nested.append(True)
            data._save_npz(target, x=np.arange(3))

    monkeypatch.setattr(np, "savez", savez_with_a_second_writer)
    data._save_npz(target, x=np.arange(3))
    np.testing.assert_array_equal(np.load(target)["x"], np.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["arrays.npz"]  # no temporary files left


# The first 20 labels of MNIST's source files (train-labels-idx1-ubyte, t10k-labels-idx1-ubyte).
MNIST_TRAIN_FILE_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5, 3, 6, 1, 7, 2, 8, 6, 9]
MNIST_TEST_FILE_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]


def test_tfds_splits_come_back_in_the_source_files_order(mnist_arrays):
    (_, train_labels), (_, test_labels) = mnist_arrays
    assert train_labels[:20].tolist() == MNIST_TRAIN_FILE_LABELS
    assert test_labels[:20].tolist() == MNIST_TEST_FILE_LABELS
    assert np.bincount(train_labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def original_imbalance_split(mnist_arrays, pos_ratio, nval, seed, ntrain=5000, ntest=500):
    """The original mnist_train.py's get_imbalance_dataset, step by step, over the MNIST files
    as TF's input_data splits them (training = the files' images 5,000 on)."""
    (x, y), (x_test, y_test) = mnist_arrays
    x, y = x[5000:], y[5000:]
    rnd = np.random.RandomState(seed)
    ratio = 1 - pos_ratio

    four = x[y == 4]
    idx = np.arange(len(four))
    rnd.shuffle(idx)
    four = four[idx]
    val_four, n_four = nval // 2, int(np.floor(ntrain * ratio)) - nval // 2
    clean_four, train_four = four[:val_four], four[val_four:val_four + n_four]
    test_four = x_test[y_test == 4]
    rnd.shuffle(np.arange(len(test_four)))  # drawn, never applied
    test_four = test_four[:ntest // 2]

    nine = x[y == 9]
    idx = np.arange(len(nine))
    rnd.shuffle(idx)
    nine = nine[idx]
    val_nine, n_nine = nval // 2, int(np.floor(ntrain * (1 - ratio))) - nval // 2
    clean_nine, train_nine = nine[:val_nine], nine[val_nine:val_nine + n_nine]
    test_nine = x_test[y_test == 9]
    idx = np.arange(len(test_nine))
    rnd.shuffle(idx)
    test_nine = test_nine[idx][:ntest // 2]

    def final_shuffle(fours, nines):
        images = np.concatenate([fours, nines])
        labels = np.concatenate([np.zeros(len(fours)), np.ones(len(nines))])
        idx = np.arange(len(images))
        rnd.shuffle(idx)
        return images[idx], labels[idx]

    return (final_shuffle(train_four, train_nine), final_shuffle(clean_four, clean_nine),
            final_shuffle(test_four, test_nine))


# Not 0.9: there the original floors 5000 * (1 - 0.9) = 499.99999999999994 to 499 fours; we take
# the intended 500 (`data._count`).
@pytest.mark.parametrize("pos_ratio,nval,seed", [(0.995, 10, 0), (0.995, 0, 56789),
                                                 (0.95, 10, 13578)])
def test_imbalance_split_is_the_original_codes_image_for_image(mnist_arrays, pos_ratio, nval,
                                                                seed):
    d = data.mnist_imbalance(pos_ratio, nval=nval, seed=seed, arrays=mnist_arrays)
    train, clean, test = original_imbalance_split(mnist_arrays, pos_ratio, nval, seed)
    for (images, labels), (want_images, want_labels) in [
            ((d.train_images, d.train_labels), train), ((d.clean_images, d.clean_labels), clean),
            (d.eval_sets["test"], test)]:
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    assert d.train_source.min() >= 5000 and (nval == 0 or d.clean_source.min() >= 5000)


class IndexedDigits(tfds.core.GeneratorBasedBuilder):
    """A tiny tfds dataset keyed, as tfds' mnist / cifar10 / cifar100, by each example's index in
    its source; the image holds that index, so the order it comes back in is visible."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(2, 2, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(1000), "test": self._generate_examples(300)}

    def _generate_examples(self, count):
        for index in range(count):
            image = np.array([index // 256, index % 256, 0, 0], np.uint8).reshape(2, 2, 1)
            yield index, {"image": image, "label": index % 10}


def test_any_tfds_split_comes_back_in_source_order_even_over_several_files(tmp_path, monkeypatch):
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    IndexedDigits(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=4))
    for split, count in (("train", 1000), ("test", 300)):
        images, labels = data.load_tfds("indexed_digits", split, data_dir=str(tmp_path))
        source_index = images[:, 0, 0, 0].astype(int) * 256 + images[:, 0, 1, 0]
        np.testing.assert_array_equal(source_index, np.arange(count))
        np.testing.assert_array_equal(labels, np.arange(count) % 10)
