"""Tests for l2rw_tf.noise: splits and label corruption as the original CIFAR code (reference §3)."""
import numpy as np
import pytest

from l2rw_tf.noise import (background_weight, corrupt_labels, num_corrupted, split_indices,
                           transition_matrix)


def balanced_labels(n, num_classes, seed=123):
    """n labels with equal class counts (as CIFAR), in random order."""
    return np.random.RandomState(seed).permutation(np.arange(n) % num_classes)


# ---------------------------------------------------------------- splits

def test_split_sizes_and_disjoint():
    s = split_indices(50000, 1000, seed=0)
    assert [len(s[k]) for k in ("noisy", "clean", "hyper_val")] == [44000, 1000, 5000]
    joined = np.concatenate([s["noisy"], s["clean"], s["hyper_val"]])
    assert np.array_equal(np.sort(joined), np.arange(50000))
    assert all(s[k].dtype == np.int64 for k in s)


def test_split_hyper_val_is_last_of_first_shuffle():
    order = np.arange(50000)
    np.random.RandomState(7).shuffle(order)
    assert np.array_equal(split_indices(50000, 1000, seed=7)["hyper_val"], order[-5000:])


def test_split_per_class_exact_counts():
    labels = balanced_labels(50000, 10)
    s = split_indices(50000, 1000, seed=3, clean_per_class=10, labels=labels)
    assert np.array_equal(np.bincount(labels[s["clean"]], minlength=10), np.full(10, 10))
    assert len(s["noisy"]) == 45000 - 100 and len(s["hyper_val"]) == 5000
    joined = np.concatenate([s["noisy"], s["clean"], s["hyper_val"]])
    assert np.array_equal(np.sort(joined), np.arange(50000))


def test_split_per_class_cifar100():
    labels = balanced_labels(50000, 100)
    s = split_indices(50000, 0, clean_per_class=10, labels=labels)
    assert np.array_equal(np.bincount(labels[s["clean"]], minlength=100), np.full(100, 10))
    assert len(s["noisy"]) == 44000


def test_split_deterministic():
    a, b, c = (split_indices(50000, 1000, seed=s) for s in (5, 5, 6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["clean"], c["clean"])
    assert not np.array_equal(a["hyper_val"], c["hyper_val"])


@pytest.mark.parametrize("kwargs", [
    dict(num_train=50000, num_clean=45000),                        # no noisy examples left
    dict(num_train=50000, num_clean=46000),
    dict(num_train=100, num_clean=1, num_hyper_val=100),
    dict(num_train=50000, num_clean=-1),
    dict(num_train=50000, num_clean=10, num_hyper_val=-5),
    dict(num_train=50000, num_clean=10.5),
    dict(num_train=50000, num_clean=0, clean_per_class=10),        # needs labels
    dict(num_train=50000, num_clean=0, clean_per_class=-1, labels=np.zeros(50000, int)),
    dict(num_train=50000, num_clean=0, clean_per_class=10, labels=np.zeros(10, int)),
])
def test_split_rejects_impossible(kwargs):
    with pytest.raises(ValueError):
        split_indices(**kwargs)


def test_split_rejects_too_few_of_a_class():
    labels = balanced_labels(50000, 10)
    labels[labels == 9] = 8
    labels[:3] = 9  # class 9 has 3 examples in all, fewer than 10 per class
    with pytest.raises(ValueError, match="class 9"):
        split_indices(50000, 0, clean_per_class=10, labels=labels)


# ---------------------------------------------------------------- corruption counts

def test_num_corrupted_round_safe():
    assert num_corrupted(5, 0.4) == 2
    assert num_corrupted(100, 0.29) == 29
    assert num_corrupted(44000, 0.4) == 17600
    assert num_corrupted(7, 0.4) == 2


@pytest.mark.parametrize("num_classes", [10, 100])
def test_uniform_paper_exact_count_all_wrong(num_classes):
    y = balanced_labels(45000, num_classes)
    noisy, corrupted, bg = corrupt_labels(y, num_classes, 0.4, "uniform", "paper", seed=2)
    k = 18000
    assert bg is None
    assert corrupted.sum() == k and corrupted[:k].all() and not corrupted[k:].any()
    assert np.all(noisy[:k] != y[:k]) and np.array_equal(noisy[k:], y[k:])
    assert noisy.min() >= 0 and noisy.max() < num_classes


def test_uniform_paper_small_round_safe():
    y = np.array([0, 1, 2, 3, 4])
    noisy, corrupted, _ = corrupt_labels(y, 5, 0.4, "uniform", "paper")
    assert corrupted.tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("semantics", ["paper", "original"])
def test_background_count(semantics):
    y = balanced_labels(45000, 10)
    noisy, corrupted, bg = corrupt_labels(y, 10, 0.4, "background", semantics, seed=0)
    assert bg == 3
    assert np.all(noisy[:18000] == bg) and np.array_equal(noisy[18000:], y[18000:])
    # Candidates already of the background class keep it and are not counted.
    assert np.array_equal(corrupted[:18000], y[:18000] != bg)
    assert corrupted.sum() == 18000 - np.sum(y[:18000] == bg)
    assert not corrupted[18000:].any()


@pytest.mark.parametrize("noise, ratio", [("none", 0.4), ("uniform", 0.0), ("background", 0.0)])
def test_no_corruption(noise, ratio):
    y = balanced_labels(1000, 10)
    for semantics in ("paper", "original"):
        noisy, corrupted, _ = corrupt_labels(y, 10, ratio, noise, semantics)
        assert np.array_equal(noisy, y) and not corrupted.any()


# ---------------------------------------------------------------- original uniform

@pytest.mark.parametrize("num_classes", [10, 100])
def test_original_uniform_never_last_class(num_classes):
    y = balanced_labels(50000, num_classes)
    noisy, corrupted, _ = corrupt_labels(y, num_classes, 0.4, "uniform", "original", seed=4)
    assert not np.any(noisy[:20000] == num_classes - 1)
    assert np.all(corrupted == (noisy != y))
    assert np.array_equal(noisy[20000:], y[20000:])


def test_original_uniform_fraction_wrong():
    # A candidate of class y < C-1 keeps its label with probability 1/(C-1); one of class C-1
    # always changes. So the expected wrong fraction is (k/n) * (1 - share(y < C-1) / (C-1)),
    # 0.4 * (1 - 1/C) = 0.36 for balanced CIFAR-10 (not 0.4, and not 0.4 * (1 - 1/(C-1))).
    C, n, ratio = 10, 50000, 0.4
    y = balanced_labels(n, C)
    _, corrupted, _ = corrupt_labels(y, C, ratio, "uniform", "original", seed=0)
    k = num_corrupted(n, ratio)
    expected = k / n * (1 - np.mean(y[:k] < C - 1) / (C - 1))
    assert abs(expected - 0.36) < 0.002
    # std of the fraction is about 0.0009; 0.4 * (1 - 1/9) = 0.3556 is about 5 std away.
    assert abs(corrupted.mean() - expected) < 0.0025


def test_original_uniform_matches_one_at_a_time_loop():
    y = balanced_labels(2000, 10)
    noisy, _, _ = corrupt_labels(y, 10, 0.4, "uniform", "original", seed=11)
    rnd = np.random.RandomState(12)
    loop = [int(np.floor(rnd.uniform(0, 9))) for _ in range(800)]
    assert noisy[:800].tolist() == loop


# ---------------------------------------------------------------- transition matrices

def test_transition_matrix_paper_uniform():
    C, ratio = 10, 0.4
    y = balanced_labels(45000, C)
    noisy, _, _ = corrupt_labels(y, C, ratio, "uniform", "paper", seed=1)
    P = transition_matrix(y, noisy, C)
    assert np.allclose(P.sum(axis=1), 1)
    off = ~np.eye(C, dtype=bool)
    assert np.max(np.abs(P[off] - ratio / (C - 1))) < 0.015
    assert np.max(np.abs(np.diag(P) - (1 - ratio))) < 0.02


def test_transition_matrix_original_uniform():
    C, ratio = 10, 0.4
    y = balanced_labels(45000, C)
    noisy, _, _ = corrupt_labels(y, C, ratio, "uniform", "original", seed=1)
    P = transition_matrix(y, noisy, C)
    # Nothing is ever relabelled to class C-1, and class C-1 candidates always change.
    assert np.all(P[:C - 1, C - 1] == 0)
    assert abs(P[C - 1, C - 1] - (1 - ratio)) < 0.02
    off = ~np.eye(C, dtype=bool)
    off[:, C - 1] = False
    assert np.max(np.abs(P[off] - ratio / (C - 1))) < 0.015
    assert np.max(np.abs(np.diag(P)[:C - 1] - (1 - ratio + ratio / (C - 1)))) < 0.02


def test_transition_matrix_background():
    C, ratio = 10, 0.4
    y = balanced_labels(45000, C)
    noisy, _, bg = corrupt_labels(y, C, ratio, "background", "paper", seed=0)
    P = transition_matrix(y, noisy, C)
    others = np.arange(C) != bg
    assert P[bg, bg] == 1
    assert np.max(np.abs(P[others, bg] - ratio)) < 0.02
    assert np.max(np.abs(P[others][:, others] - (1 - ratio) * np.eye(C)[others][:, others])) < 0.02


def test_transition_matrix_exact_small():
    P = transition_matrix([0, 0, 0, 1], [0, 1, 1, 1], 3)
    assert np.allclose(P, [[1 / 3, 2 / 3, 0], [0, 1, 0], [0, 0, 0]])


# ---------------------------------------------------------------- background seeds (reference §3)

@pytest.mark.parametrize("seed, classes", [
    (0, (3, 41)), (6, (0, 7)), (28, (7, 85)), (184, (1, 12)), (229, (5, 62))])
@pytest.mark.parametrize("semantics", ["original", "paper"])
def test_background_classes_of_paper_seeds(seed, classes, semantics):
    y = np.zeros(100, dtype=np.int64)
    got = tuple(corrupt_labels(y, C, 0.4, "background", semantics, seed=seed)[2]
                for C in (10, 100))
    assert got == classes


def test_background_weight():
    assert background_weight(10, 0.4) == pytest.approx(0.1 / 0.46)
    assert background_weight(100, 0.4) == pytest.approx(0.01 / 0.406)
    assert background_weight(10, 0.0) == pytest.approx(1.0)
    # It is the measured clean fraction of the background-labelled examples.
    y = balanced_labels(45000, 10)
    noisy, _, bg = corrupt_labels(y, 10, 0.4, "background", seed=0)
    assert np.mean(y[noisy == bg] == bg) == pytest.approx(background_weight(10, 0.4), abs=0.005)


# ---------------------------------------------------------------- end to end vs the original

def original_generator(labels, num_clean, num_val, ratio, num_classes, seed, background):
    """The steps of the original `generate_noisy_cifar_data.py`, restated on labels only."""
    def split(num, partitions):
        idx = np.arange(num)
        np.random.RandomState(seed).shuffle(idx)
        return idx[:partitions], idx[partitions:]

    train, _ = split(len(labels), len(labels) - num_val)
    noisy_pos, clean_pos = split(len(train), len(train) - num_clean)
    noisy_idx, clean_idx = train[noisy_pos], train[clean_pos]
    y = labels[noisy_idx].copy()
    k = int(len(y) * ratio)
    rnd = np.random.RandomState(seed + 1)
    if background:
        y[:k] = np.floor(rnd.uniform(0, num_classes - 1)).astype(np.int64)
    else:
        y[:k] = np.floor(rnd.uniform(0, num_classes - 1, [k])).astype(np.int64)
    return noisy_idx, clean_idx, y


@pytest.mark.parametrize("noise, num_clean, C", [
    ("uniform", 1000, 10), ("uniform", 1000, 100), ("background", 100, 10),
    ("background", 1000, 100)])
def test_reproduces_original_generator(noise, num_clean, C):
    labels = balanced_labels(50000, C, seed=9)
    seed = 28
    ref_noisy, ref_clean, ref_y = original_generator(labels, num_clean, 5000, 0.4, C, seed,
                                                     noise == "background")
    s = split_indices(50000, num_clean, seed=seed)
    assert np.array_equal(s["noisy"], ref_noisy) and np.array_equal(s["clean"], ref_clean)
    noisy, _, _ = corrupt_labels(labels[s["noisy"]], C, 0.4, noise, "original", seed=seed)
    assert np.array_equal(noisy, ref_y)


# ---------------------------------------------------------------- determinism and validation

@pytest.mark.parametrize("noise, semantics", [
    ("uniform", "paper"), ("uniform", "original"), ("background", "paper")])
def test_corrupt_deterministic(noise, semantics):
    y = balanced_labels(10000, 100)
    a = corrupt_labels(y, 100, 0.4, noise, semantics, seed=3)
    b = corrupt_labels(y, 100, 0.4, noise, semantics, seed=3)
    c = corrupt_labels(y, 100, 0.4, noise, semantics, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_corrupt_does_not_modify_input():
    y = balanced_labels(1000, 10)
    before = y.copy()
    corrupt_labels(y, 10, 0.4, "uniform", "paper")
    assert np.array_equal(y, before)


@pytest.mark.parametrize("args, kwargs", [
    ((np.zeros(10, int), 10, 1.0), {}),
    ((np.zeros(10, int), 10, -0.1), {}),
    ((np.zeros(10, int), 10, 0.4), dict(noise="pair")),
    ((np.zeros(10, int), 10, 0.4), dict(semantics="tf1")),
    ((np.array([0, 10]), 10, 0.4), {}),
    ((np.array([-1, 3]), 10, 0.4), {}),
    ((np.zeros((2, 5), int), 10, 0.4), {}),
    ((np.zeros(10), 10, 0.4), {}),                                  # float labels
    ((np.zeros(10, int), 1, 0.4), {}),
])
def test_corrupt_rejects_bad_input(args, kwargs):
    with pytest.raises(ValueError):
        corrupt_labels(*args, **kwargs)


def test_background_weight_rejects_bad_input():
    with pytest.raises(ValueError):
        background_weight(10, 1.0)
    with pytest.raises(ValueError):
        background_weight(1, 0.4)
