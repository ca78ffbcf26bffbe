"""CIFAR noisy-label splits and label corruption, as the original L2RW code (reference §3).

Pure numpy; everything is a deterministic function of the seed. What the original TF1 code
(`cifar/generate_noisy_cifar_data.py`) does:

1. Shuffle `arange(50000)` with `RandomState(seed)`; the last 5,000 are the hyper-validation set.
2. Shuffle the remaining 45,000 again with a fresh `RandomState(seed)`; the last `num_clean` of
   that order are the clean set, the others (in that order) the noisy pool.
3. With `RandomState(seed + 1)`, relabel the first `ratio` fraction of the noisy pool:
   UniformFlip: `floor(uniform(0, C - 1, [k]))`; BackgroundFlip: one class `floor(uniform(0, C - 1))`.
   (The original then re-shuffles the pool, which only changes the order, not which examples are
   corrupted; we keep the order so the result lines up with the indices.)

`split_indices(...)["noisy"]` followed by `corrupt_labels(labels[noisy], ...)` with
semantics="original" reproduces the original's clean/noisy sets and noisy labels exactly.
"""
import operator

import numpy as np

NOISE_TYPES = ("uniform", "background", "none")
SEMANTICS = ("paper", "original")


def _size(name, value):
    """Checks that a size is a non-negative integer (no silent truncation of floats)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _shuffled(num, seed):
    """arange(num) shuffled in place by a fresh RandomState(seed), as the original `_split`."""
    order = np.arange(num, dtype=np.int64)
    np.random.RandomState(seed).shuffle(order)
    return order


def split_indices(num_train, num_clean, num_hyper_val=5000, seed=0, clean_per_class=None,
                  labels=None):
    """Disjoint index arrays {"noisy", "clean", "hyper_val"} into the original training set.

    Default: the original's random clean set of `num_clean` examples. With `clean_per_class`
    (needs `labels`): the first `clean_per_class` examples of each class in the shuffled
    remainder (the paper's class-balanced clean set); `num_clean` is then ignored.
    """
    num_train = _size("num_train", num_train)
    num_hyper_val = _size("num_hyper_val", num_hyper_val)
    num_clean = _size("num_clean", num_clean)
    if num_hyper_val >= num_train:
        raise ValueError(f"num_hyper_val = {num_hyper_val} leaves no training examples out of "
                         f"num_train = {num_train}; make it smaller")
    if clean_per_class is not None:
        clean_per_class = _size("clean_per_class", clean_per_class)
        if labels is None:
            raise ValueError("clean_per_class needs labels: pass labels=<training labels>")
        labels = np.asarray(labels)
        if labels.shape != (num_train,):
            raise ValueError(f"labels must have shape ({num_train},), got {labels.shape}")
    else:
        if num_clean + num_hyper_val >= num_train:
            raise ValueError(f"num_clean + num_hyper_val = {num_clean + num_hyper_val} leaves no "
                             f"noisy examples out of num_train = {num_train}; make them smaller")

    first = _shuffled(num_train, seed)
    remainder, hyper_val = first[:num_train - num_hyper_val], first[num_train - num_hyper_val:]
    # The original shuffles the remainder again with the same seed (a second `_split` call).
    remainder = remainder[_shuffled(len(remainder), seed)]

    if clean_per_class is None:
        noisy, clean = remainder[:len(remainder) - num_clean], remainder[len(remainder) - num_clean:]
    else:
        remainder_labels = labels[remainder]
        is_clean = np.zeros(len(remainder), dtype=bool)
        # Classes from the whole training set, so a class missing from the remainder is an error.
        for c in np.unique(labels):
            positions = np.flatnonzero(remainder_labels == c)
            if len(positions) < clean_per_class:
                raise ValueError(f"class {c} has only {len(positions)} examples outside the "
                                 f"hyper-validation set, fewer than clean_per_class = "
                                 f"{clean_per_class}; lower clean_per_class or num_hyper_val")
            is_clean[positions[:clean_per_class]] = True
        if is_clean.all():
            raise ValueError(f"clean_per_class = {clean_per_class} leaves no noisy examples; "
                             f"make it smaller")
        noisy, clean = remainder[~is_clean], remainder[is_clean]
    return {"noisy": noisy.astype(np.int64), "clean": clean.astype(np.int64),
            "hyper_val": hyper_val.astype(np.int64)}


def num_corrupted(n, ratio):
    """floor(ratio * n), safe against float error (0.4 * 5 = 2, 0.29 * 100 = 29).

    The original uses int(n * ratio); the two agree for the paper's sizes and ratios.
    """
    return int(np.floor(ratio * n + 1e-9))


def corrupt_labels(labels, num_classes, ratio, noise="uniform", semantics="paper", seed=0):
    """Corrupts the first floor(ratio * n) labels of an already shuffled label array.

    Returns (noisy_labels, is_corrupted, background_class or None). `is_corrupted` is True
    exactly where the label changed. All draws come from RandomState(seed + 1), as the original.

    uniform, paper:     each candidate gets a different class, uniformly (all really wrong).
    uniform, original:  floor(U(0, C - 1)) per candidate: uniform on {0..C-2}, so class C - 1 never
                        appears as a noisy label and the label can stay the same.
    background:         every candidate gets one background class floor(U(0, 1) * (C - 1)), the
                        first draw of RandomState(seed + 1). The paper gives no rule, so both
                        semantics use the original's draw and agree on the class (seeds 0, 6, 28,
                        184, 229 give the paper's classes, reference §3). Candidates already of
                        that class keep their label and are not counted as corrupted.
    none (or ratio 0):  labels unchanged.
    """
    num_classes = _size("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if noise not in NOISE_TYPES:
        raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}")
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} "
                         f"dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")

    clean_labels = labels.astype(np.int64)
    noisy_labels = clean_labels.copy()
    rnd = np.random.RandomState(seed + 1)
    background = None
    k = 0 if noise == "none" else num_corrupted(len(labels), ratio)

    if noise == "background":
        # Drawn first and even when k = 0, so the class depends on the seed alone.
        # Same value as the original's floor(rnd.uniform(0, C - 1)).
        background = int(np.floor(rnd.uniform(0, 1) * (num_classes - 1)))
        noisy_labels[:k] = background
    elif noise == "uniform" and semantics == "paper":
        offset = rnd.randint(1, num_classes, size=k)
        noisy_labels[:k] = (clean_labels[:k] + offset) % num_classes
    elif noise == "uniform":
        # Vectorised draws give the same stream as the one-at-a-time loop.
        noisy_labels[:k] = np.floor(rnd.uniform(0, num_classes - 1, size=k)).astype(np.int64)

    return noisy_labels, noisy_labels != clean_labels, background


def transition_matrix(clean_labels, noisy_labels, num_classes):
    """Row-normalised C x C matrix: P[i, j] = fraction of class-i examples labelled j.

    Rows of classes with no examples are all zero.
    """
    clean_labels = np.asarray(clean_labels, dtype=np.int64)
    noisy_labels = np.asarray(noisy_labels, dtype=np.int64)
    if clean_labels.shape != noisy_labels.shape:
        raise ValueError(f"clean and noisy labels differ in shape: {clean_labels.shape} vs "
                         f"{noisy_labels.shape}")
    for name, y in (("clean_labels", clean_labels), ("noisy_labels", noisy_labels)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{name} must be in [0, {num_classes}), got range "
                             f"[{y.min()}, {y.max()}]")
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (clean_labels, noisy_labels), 1)
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(totals, 1)


def background_weight(num_classes, ratio):
    """The "Weighted" baseline's weight for the background class: its clean fraction.

    With balanced classes a fraction ratio + (1 - ratio)/C of the data ends up labelled background,
    of which only 1/C truly is, so the clean fraction is (1/C) / (ratio + (1 - ratio)/C).
    """
    num_classes = _size("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    return (1 / num_classes) / (ratio + (1 - ratio) / num_classes)
