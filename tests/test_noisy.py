"""The noisy-label task (issue 3): data construction end to end, image folders, augmentation
and its resumability, the learning-rate schedule, the new methods' weights, and the CLI."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from conftest import REPO
from l2rw_tf import config, data, main, noise, train
from l2rw_tf.step import StepConfig, step_gradients
from l2rw_tf.models import lenet


@pytest.fixture(scope="module")
def mnist():
    return data.load_dataset("mnist")


# ---- data construction -------------------------------------------------------------------

@pytest.mark.parametrize("noise_type,semantics", [
    ("uniform", "paper"), ("uniform", "original"), ("background", "paper")])
def test_noisy_experiment_splits_and_flags(mnist, noise_type, semantics):
    """End to end on real MNIST: disjoint hyper-val / clean / noisy splits covering the training
    split, labels from the source, is_noisy exactly where the label changed, exact counts."""
    (train_x, train_y), (test_x, test_y), _ = mnist
    d = data.noisy_experiment("mnist", noise_type, 0.4, semantics, num_clean=1000, seed=3,
                              arrays=mnist)
    parts = [d.train_source, d.clean_source, d.hyper_val_source]
    assert [len(p) for p in parts] == [54000, 1000, 5000]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(60000))
    np.testing.assert_array_equal(d.train_images, train_x[d.train_source])
    np.testing.assert_array_equal(d.train_clean_labels, train_y[d.train_source])
    np.testing.assert_array_equal(d.clean_images, train_x[d.clean_source])
    np.testing.assert_array_equal(d.clean_labels, train_y[d.clean_source])  # never corrupted
    np.testing.assert_array_equal(d.train_is_noisy, d.train_labels != d.train_clean_labels)
    k = noise.num_corrupted(54000, 0.4)
    assert not d.train_is_noisy[k:].any()  # only the first 40% of the pool are candidates
    if noise_type == "uniform" and semantics == "paper":
        assert d.train_is_noisy.sum() == k
    elif noise_type == "background":
        bg = d.info["background_class"]
        assert (d.train_labels[:k] == bg).all()
        assert d.train_is_noisy.sum() == k - np.sum(d.train_clean_labels[:k] == bg)
    else:  # original uniform: the label may stay, never becomes class 9
        assert 0.8 * k < d.train_is_noisy.sum() < k and not (d.train_labels[:k] == 9).any()
    assert d.info["corrupted"] == d.train_is_noisy.sum()
    # Hyper-validation: the same images twice, clean labels and corrupted ones.
    hv_x, hv_clean = d.eval_sets["hyper_val_clean"]
    hv_x2, hv_noisy = d.eval_sets["hyper_val_noisy"]
    np.testing.assert_array_equal(hv_x, train_x[d.hyper_val_source])
    np.testing.assert_array_equal(hv_x, hv_x2)
    np.testing.assert_array_equal(hv_clean, train_y[d.hyper_val_source])
    changed = hv_noisy != hv_clean
    assert 0 < changed.sum() <= noise.num_corrupted(5000, 0.4) and not changed[2000:].any()
    np.testing.assert_array_equal(d.eval_sets["test"][1], test_y)


def test_noisy_experiment_reproduces_the_original_generator(mnist):
    """Under semantics=original the pool and its labels are the original script's, before its
    final re-shuffle (which only reorders): same split code, then the same label draws."""
    d = data.noisy_experiment("mnist", "uniform", 0.4, "original", num_clean=100, seed=0,
                              arrays=mnist)
    labels = mnist[0][1]
    order = np.arange(60000)
    np.random.RandomState(0).shuffle(order)
    rest = order[:55000]
    second = np.arange(55000)
    np.random.RandomState(0).shuffle(second)
    pool = rest[second][:54900]
    np.testing.assert_array_equal(d.train_source, pool)
    rnd = np.random.RandomState(1)
    k = int(54900 * 0.4)
    expected = np.concatenate([np.floor(rnd.uniform(0, 9, [k])).astype(np.int64),
                               labels[pool][k:]])
    np.testing.assert_array_equal(d.train_labels, expected)


def test_class_balanced_clean_set_and_subset(mnist):
    d = data.noisy_experiment("mnist", "background", 0.4, clean_per_class=10, seed=0,
                              num_train_subset=1000, arrays=mnist)
    assert np.bincount(d.clean_labels, minlength=10).tolist() == [10] * 10
    full = data.noisy_experiment("mnist", "background", 0.4, clean_per_class=10, seed=0,
                                 arrays=mnist)
    # The subset is the first K of the same pool, corrupted at the same ratio.
    np.testing.assert_array_equal(d.train_source, full.train_source[:1000])
    assert np.all(d.train_labels[:400] == d.info["background_class"])
    np.testing.assert_array_equal(d.train_labels[400:], d.train_clean_labels[400:])
    assert d.info["background_class"] == 3  # seed 0 -> class 3 (reference §3)
    with pytest.raises(data.DataError, match="num_train_subset"):
        data.noisy_experiment("mnist", "background", 0.4, clean_per_class=10,
                              num_train_subset=10 ** 6, arrays=mnist)


def test_noise_none_changes_nothing(mnist):
    d = data.noisy_experiment("mnist", "none", 0.4, num_clean=100, num_hyper_val=0, arrays=mnist)
    assert not d.train_is_noisy.any() and set(d.eval_sets) == {"test"}
    np.testing.assert_array_equal(d.train_labels, d.train_clean_labels)


# ---- image folders -----------------------------------------------------------------------

def write_folder(root, sizes=(8, 8), per_class=(4, 2), classes=("cat", "ant", "bee")):
    """root/{train,test}/<class>/ with PNG and JPEG images; returns the class order."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                image = rng.integers(0, 256, (*sizes, 3), dtype=np.uint8)
                if i % 2:
                    blob = tf.io.encode_jpeg(image, quality=100)
                    (root / split / c / f"{i}.jpg").write_bytes(blob.numpy())
                else:
                    (root / split / c / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return sorted(classes)


def test_folder_dataset_loads_labels_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    classes = write_folder(tmp_path / "imgs")
    (train_x, train_y), (test_x, test_y), num_classes = data.load_dataset(
        f"folder:{tmp_path / 'imgs'}")
    assert num_classes == 3 and train_x.shape == (12, 8, 8, 3) and train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [4, 4, 4] and np.bincount(test_y).tolist() == [2, 2, 2]
    # Labels follow the sorted class folders: check a PNG (lossless) pixel-exactly.
    png = sorted((tmp_path / "imgs" / "train" / "bee").glob("*.png"))[0]
    pixels = tf.io.decode_png(png.read_bytes()).numpy()
    match = [i for i in range(len(train_x)) if np.array_equal(train_x[i], pixels)]
    assert len(match) == 1 and classes[train_y[match[0]]] == "bee"
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 2  # train and test
    again = data.load_folder(str(tmp_path / "imgs"), "train")
    np.testing.assert_array_equal(again[0], train_x)
    assert again[2] == classes
    # A changed folder is decoded anew, not served from the stale cache.
    os.remove(png)
    assert len(data.load_folder(str(tmp_path / "imgs"), "train")[1]) == 11


def test_folder_dataset_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("L2RW_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_dataset(f"folder:{tmp_path / 'missing'}")
    write_folder(tmp_path / "a")
    (tmp_path / "a" / "test").rename(tmp_path / "a" / "val")
    with pytest.raises(data.DataError, match="no 'test' split"):
        data.load_dataset(f"folder:{tmp_path / 'a'}")
    write_folder(tmp_path / "b")
    odd = tf.io.encode_png(np.zeros((9, 8, 3), np.uint8)).numpy()
    (tmp_path / "b" / "train" / "ant" / "odd.png").write_bytes(odd)
    with pytest.raises(data.DataError, match="differ in size"):
        data.load_dataset(f"folder:{tmp_path / 'b'}")


def test_dataset_labels():
    assert data.dataset_label("folder:../shared/datasets/cifar10_jpeg") == "CIFAR-10 (JPEG copy)"
    assert data.dataset_label("folder:../shared/datasets/cifar10_jpeg/") == "CIFAR-10 (JPEG copy)"
    assert data.dataset_label("cifar10") == "CIFAR-10"
    assert data.dataset_label("folder:/x/y").startswith("image folder")


# ---- augmentation ------------------------------------------------------------------------

def test_augment_batch_is_a_padded_crop_or_its_mirror():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 6, 5, 3), dtype=np.int32)
    out = data.augment_batch(tf.constant(images), tf.constant([7, 3], tf.int64)).numpy()
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    offsets, flips = set(), 0
    for i in range(len(images)):
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                 if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(
                     padded[i, dy:dy + 6, dx:dx + 5]))]
        assert found, f"image {i} is no crop of its padded original"
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 10 and 10 < flips < 54  # draws differ across the batch
    again = data.augment_batch(tf.constant(images), tf.constant([7, 3], tf.int64)).numpy()
    other = data.augment_batch(tf.constant(images), tf.constant([7, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)


def test_augmented_pipeline_resumes_exactly(tmp_path):
    """The iterator's checkpoint restores the shuffle and the batch counter that seeds the
    stateless augmentation: batches after a restore equal those of an uninterrupted iterator."""
    images = np.random.default_rng(1).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(50) % 5

    def pipeline():
        return data.example_dataset(images, labels, batch_size=20, seed=4,
                                    preprocess=data.to_signed, augment_seed=11)

    straight = [b for _, b in zip(range(8), pipeline().as_numpy_iterator())]
    it = iter(pipeline())
    ckpt = tf.train.Checkpoint(it=it)
    for _ in range(3):
        next(it)
    path = ckpt.save(str(tmp_path / "it"))
    for _ in range(2):
        next(it)  # progress lost in the "crash"
    it2 = iter(pipeline())
    tf.train.Checkpoint(it=it2).restore(path).assert_consumed()
    for expected in straight[3:]:
        got = next(it2)
        for key in ("image", "label", "index"):
            np.testing.assert_array_equal(got[key].numpy(), expected[key])
    # Scaled to [-1, 1] after augmentation; the zero padding becomes -1.
    assert straight[0]["image"].min() >= -1.0 and straight[0]["image"].max() <= 1.0
    assert np.any(straight[0]["image"] == -1.0)


def test_to_signed_range():
    x = data.to_signed(tf.constant([0, 255, 51], tf.uint8)).numpy()
    np.testing.assert_allclose(x, [-1.0, 1.0, -0.6], atol=1e-6)


# ---- learning-rate schedule --------------------------------------------------------------

@pytest.mark.parametrize("boundaries,expected", [
    ([5, 8], [0.1] * 4 + [0.01] * 3 + [0.001] * 3),
    ([1, 3], [0.01] * 2 + [0.001] * 8),
])
def test_lr_drop_applies_from_step_boundary_minus_one(boundaries, expected):
    """The original scheduler sets the new rate when niter + 1 == boundary, before that step:
    with boundary 5 the 0-based step 4 is the first at the new rate. Measured on the update."""
    var = keras.Variable([0.0])
    opt = train.TF1Momentum(train.learning_rate(0.1, boundaries, [0.01, 0.001]), momentum=0.0)
    used = []
    for step in range(10):
        before = float(var.numpy()[0])
        opt.apply_gradients([(tf.constant([1.0]), var)])
        used.append(before - float(var.numpy()[0]))
        # `used` is a float32 difference of O(0.1) values: good to ~1e-7 absolute.
        assert train.current_learning_rate(opt, step + 1) == pytest.approx(used[-1], abs=1e-6)
    np.testing.assert_allclose(used, expected, rtol=1e-4)


def test_lr_schedule_rejects_bad_boundaries():
    assert train.learning_rate(0.1) == 0.1
    for boundaries, values in (([5, 5], [1, 2]), ([0], [1]), ([3], [1, 2])):
        with pytest.raises(ValueError):
            train.learning_rate(0.1, boundaries, values)


# ---- the new methods' weights ------------------------------------------------------------

def batch(n=10, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    return {"image": tf.constant(rng.random((n, 28, 28, 1), dtype=np.float32)),
            "label": tf.constant(rng.integers(0, classes, n)),
            "is_noisy": tf.constant(rng.random(n) < 0.4), "index": tf.range(n, dtype=tf.int64)}


def test_weighted_method_downweights_the_background_class():
    noisy = batch()
    noisy["label"] = tf.constant([3, 3, 3, 3, 0, 1, 2, 5, 3, 9])
    bw = noise.background_weight(10, 0.4)
    config = StepConfig(method="weighted", background_class=3, background_weight=bw)
    model = lenet(10, seed=0)
    pair = (noisy["image"], noisy["label"])
    w = step_gradients(model, config, pair, None).example_weights.numpy()
    raw = np.where(noisy["label"].numpy() == 3, bw, 1.0)
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-6)
    for method in ("clean_only", "finetune", "baseline"):
        w = step_gradients(model, StepConfig(method=method), pair, None).example_weights
        np.testing.assert_allclose(w.numpy(), np.full(10, 0.1), rtol=1e-6)


@pytest.mark.parametrize("method", ["weighted", "clean_only", "finetune", "l2rw"])
def test_new_methods_trace_once(method):
    model = lenet(10, seed=0)
    step, stats, _, traces = train.make_train_step(
        model, train.TF1Momentum(train.learning_rate(0.1, [2], [0.01])),
        StepConfig(method=method, background_class=3, background_weight=0.2),
        tf.random.Generator.from_seed(0))
    for seed in range(4):
        step(batch(seed=seed), batch(n=6, seed=seed + 10))
    assert traces[0] == 1 and float(stats[0]) == 4


# ---- command line ------------------------------------------------------------------------

MNIST_BG = str(REPO / "configs" / "mnist_background_lenet.flags")


@pytest.mark.parametrize("args,message", [
    (["--noise=salt"], "noise"),
    (["--ratio=1.0"], "--ratio=1.0 must be in [0, 1)"),
    (["--noise_semantics=tf"], "noise_semantics"),
    (["--method=ratio"], "--method=ratio applies to --task=imbalance only"),
    (["--method=weighted", "--noise=uniform"], "needs --noise=background"),
    (["--method=finetune"], "--method=finetune needs --finetune_from"),
    (["--finetune_from=/tmp"], "--finetune_from applies to --method=finetune"),
    (["--method=finetune", "--finetune_from=/nonexistent"], "is not a finished run directory"),
    (["--num_clean=100"], "--num_clean and --clean_per_class exclude each other"),
    (["--clean_per_class=0"], "--clean_per_class=0 must be positive"),
    (["--clean_per_class=7000"], "fewer than clean_per_class"),
    (["--num_train_subset=0"], "--num_train_subset=0 must be positive"),
    (["--num_train_subset=100000"], "--num_train_subset=100000 must be in"),
    (["--lr_boundaries=10,5", "--lr_values=0.1,0.01"], "strictly increasing"),
    (["--lr_boundaries=10", "--lr_values=0.1,0.01"], "one rate per --lr_boundaries"),
    (["--lr_boundaries=ten", "--lr_values=0.1"], "must be integers"),
    (["--lr_boundaries=10", "--lr_values=-1"], "must be positive"),
    (["--weight_decay=1e-4"], "--model=lenet has no weight decay"),
    (["--width=0.5"], "--width applies to the ResNet models"),
    (["--model=resnet32", "--units=2"], "--units applies to --model=resnet"),
    (["--model=resnet", "--width=0"], "--width=0.0 must be positive"),
    (["--model=resnet", "--dropout=1.5"], "--dropout=1.5 must be in [0, 1)"),
    (["--model=resnet", "--bn_momentum=1"], "--bn_momentum=1.0 must be in [0, 1)"),
    (["--bn_momentum=0.9"], "--bn_momentum applies to the ResNet models"),
    (["--model=vgg"], "--model=vgg is unknown"),
    (["--pos_ratio=0.9"], "--pos_ratio applies to --task=imbalance only"),
    (["--dataset=svhn"], "--dataset=svhn is unknown"),
    (["--dataset=folder:/nonexistent/images"], "does not exist"),
    (["--clean_batch_size=500"], "exceeds the clean set (100 images)"),
    (["--method=clean_only", "--batch_size=200"], "--batch_size=200 exceeds the clean set"),
    (["--task=imbalance"], "--noise applies to --task=noisy only"),
])
def test_bad_noisy_flags_raise_usage_errors(tmp_path, args, message):
    with pytest.raises((main.UsageError, flags.Error)) as info:
        main.run(["l2rw", f"--flagfile={MNIST_BG}", *args, f"--logdir={tmp_path / 'run'}"])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_noisy_flag_exits_2_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "l2rw_tf.main", f"--flagfile={MNIST_BG}", "--ratio=-0.1"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --ratio=-0.1 must be in [0, 1)"


def test_default_task_is_the_papers_setting_of_the_dataset():
    """`--dataset=cifar10 --noise=uniform --ratio=0.4` alone resolves to Table 1's setting."""
    main.FLAGS.unparse_flags()
    main.FLAGS(["l2rw", "--dataset=cifar10", "--noise=uniform", "--ratio=0.4"])
    run_config = config.from_flags(main.FLAGS)
    got = {k: getattr(run_config, k) for k in (
        "task", "model", "num_clean", "clean_per_class", "num_steps", "lr", "lr_boundaries",
        "lr_values", "weight_decay", "augment", "num_hyper_val", "batch_size")}
    assert got == {"task": "noisy", "model": "wrn28_10", "num_clean": 1000,
                   "clean_per_class": None, "num_steps": 60000, "lr": 0.1,
                   "lr_boundaries": (40000, 50000), "lr_values": (0.01, 0.001),
                   "weight_decay": 1e-4, "augment": True, "num_hyper_val": 5000,
                   "batch_size": 100}
    main.FLAGS.unparse_flags()
    main.FLAGS(["l2rw", "--dataset=cifar100", "--noise=background"])
    run_config = config.from_flags(main.FLAGS)
    assert (run_config.model, run_config.clean_per_class, run_config.num_steps,
            run_config.lr_boundaries) == ("resnet32", 10, 80000, (40000, 60000))
