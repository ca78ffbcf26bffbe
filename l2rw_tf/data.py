"""Datasets and `tf.data` pipelines.

Every training example carries a dict {"image", "label", "index", "is_noisy"}: `index` is its
position in the training set and `is_noisy` whether its label was corrupted, so weights can be
analysed per example. Images stay uint8 until the batch is formed (small checkpoints of the input
pipeline, which only shuffles indices).
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


class DataError(ValueError):
    """Data cannot be constructed as asked (missing offline, impossible split)."""


@dataclasses.dataclass
class ExperimentData:
    """Arrays of one experiment. Images uint8 [N, H, W, C], labels int64 [N]."""
    train_images: np.ndarray
    train_labels: np.ndarray
    train_is_noisy: np.ndarray
    clean_images: np.ndarray
    clean_labels: np.ndarray
    eval_sets: dict  # name -> (images, labels), e.g. {"test": ..., "train": ...}
    num_classes: int
    info: dict = dataclasses.field(default_factory=dict)  # counts and choices, for the logs

    @property
    def input_shape(self):
        return self.train_images.shape[1:]


def load_tfds(name, split, data_dir=None):
    """(images uint8 [N, H, W, C], labels int64 [N]) of a tfds dataset, with a clear error offline."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            builder.download_and_prepare()
        images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                                          as_supervised=True))
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds offline; name the fix instead.
        where = data_dir or "the default tfds directory (~/tensorflow_datasets)"
        raise DataError(
            f"cannot load tfds dataset {name!r} split {split!r} from {where} ({type(e).__name__}); "
            f"set --data_dir or TFDS_DATA_DIR to a prepared tfds directory "
            f"(e.g. ../shared/tensorflow_datasets) or run once with internet access") from None
    return images, labels.astype(np.int64)


def _count(budget, fraction):
    # floor() of a product that should be an integer: 5000 * (1 - 0.9) is 499.999... in float,
    # which the original code floors to 499. The epsilon makes it the intended 500.
    return int(np.floor(budget * fraction + 1e-9))


def mnist_imbalance(pos_ratio=0.995, ntrain=5000, nval=10, ntest=500, seed=0, data_dir=None,
                    minority_digit=4, majority_digit=9, arrays=None):
    """The 4-vs-9 class-imbalance set of the paper (reference §2); 4 -> label 0, 9 -> label 1.

    Of the budget `ntrain`, floor(ntrain·(1−p)) images are 4s and floor(ntrain·p) are 9s; `nval`
    of them (half of each class) are carved out as the clean set, disjoint from training. The test
    set has `ntest` images, half of each class. Draws follow the original code's order with
    `np.random.RandomState(seed)`. `arrays` = ((train_x, train_y), (test_x, test_y)) skips tfds.
    """
    if not 0.0 < pos_ratio < 1.0:
        raise DataError(f"--pos_ratio must be in (0, 1), got {pos_ratio}")
    if nval < 0 or nval % 2:
        raise DataError(f"--nval must be even and >= 0 (half 4s, half 9s), got {nval}")
    if ntest <= 0 or ntest % 2:
        raise DataError(f"--ntest must be even and > 0 (half 4s, half 9s), got {ntest}")
    if arrays is None:
        arrays = load_tfds("mnist", "train", data_dir), load_tfds("mnist", "test", data_dir)
    (train_x, train_y), (test_x, test_y) = arrays
    rnd = np.random.RandomState(seed)

    def take(images, labels, digit, counts, shuffle=True):
        pool = images[labels == digit]
        if sum(counts) > len(pool):
            raise DataError(f"asked for {sum(counts)} images of digit {digit} but only "
                            f"{len(pool)} exist; lower --ntrain/--nval/--ntest")
        if shuffle:
            pool = pool[rnd.permutation(len(pool))]
        bounds = np.cumsum([0] + list(counts))
        return [pool[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    per_class_val = nval // 2
    n_minority = _count(ntrain, 1.0 - pos_ratio) - per_class_val
    n_majority = _count(ntrain, pos_ratio) - per_class_val
    if n_minority < 1:
        raise DataError(f"--ntrain {ntrain} at --pos_ratio {pos_ratio} leaves {n_minority} "
                        f"minority training images after the clean set; raise --ntrain or "
                        f"lower --pos_ratio/--nval")
    # Same draw order as the original: 4s (train pool, then test), then 9s.
    val0, train0 = take(train_x, train_y, minority_digit, [per_class_val, n_minority])
    (test0,) = take(test_x, test_y, minority_digit, [ntest // 2])
    val1, train1 = take(train_x, train_y, majority_digit, [per_class_val, n_majority])
    (test1,) = take(test_x, test_y, majority_digit, [ntest // 2])

    def labelled(x0, x1):
        images = np.concatenate([x0, x1])
        labels = np.concatenate([np.zeros(len(x0), np.int64), np.ones(len(x1), np.int64)])
        order = rnd.permutation(len(images))  # the original's final shuffle
        return images[order], labels[order]

    train_images, train_labels = labelled(train0, train1)
    clean_images, clean_labels = labelled(val0, val1)
    test_images, test_labels = labelled(test0, test1)
    return ExperimentData(
        train_images=train_images, train_labels=train_labels,
        train_is_noisy=np.zeros(len(train_labels), bool),
        clean_images=clean_images, clean_labels=clean_labels,
        eval_sets={"test": (test_images, test_labels), "train": (train_images, train_labels)},
        num_classes=2,
        info={"train_minority": len(train0), "train_majority": len(train1),
              "clean": len(clean_labels), "test": len(test_labels)})


def to_float(images):
    """uint8 -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def example_dataset(images, labels, is_noisy=None, batch_size=100, seed=0, preprocess=to_float):
    """Endless shuffled batches (epoch by epoch, like the original's `next_batch`) of dicts
    {"image", "label", "index", "is_noisy"}. Only indices pass through the shuffle, so the
    iterator's checkpoint is small; the images are gathered per batch."""
    if is_noisy is None:
        is_noisy = np.zeros(len(labels), bool)
    images, labels, is_noisy = (tf.constant(a) for a in (images, labels, is_noisy))

    def gather(index):
        return {"image": preprocess(tf.gather(images, index)), "label": tf.gather(labels, index),
                "index": index, "is_noisy": tf.gather(is_noisy, index)}

    ds = tf.data.Dataset.range(len(labels))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True).repeat()
    return ds.batch(batch_size, drop_remainder=True).map(gather).prefetch(tf.data.AUTOTUNE)


def class_balanced_dataset(images, labels, batch_size=100, seed=0, preprocess=to_float):
    """Batches that draw each class with equal probability (the `resample` baseline)."""
    classes = np.unique(labels)
    per_class = [
        tf.data.Dataset.from_tensor_slices(np.flatnonzero(labels == c))
        .shuffle(int(np.sum(labels == c)), seed=seed + i, reshuffle_each_iteration=True).repeat()
        for i, c in enumerate(classes)]
    ds = tf.data.Dataset.sample_from_datasets(per_class, seed=seed, rerandomize_each_iteration=True)
    images, labels = tf.constant(images), tf.constant(labels)

    def gather(index):
        return {"image": preprocess(tf.gather(images, index)), "label": tf.gather(labels, index),
                "index": index, "is_noisy": tf.zeros_like(index, tf.bool)}

    return ds.batch(batch_size, drop_remainder=True).map(gather).prefetch(tf.data.AUTOTUNE)
