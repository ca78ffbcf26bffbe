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
