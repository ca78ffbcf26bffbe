"""l2rw_tf.label_issues and contact_sheet (ranking.py): the examples of a Keras fit ranked
likeliest mislabelled first, ties never broken by position, and the suspects' contact sheet."""
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import l2rw_tf
from conftest import REPO
from l2rw_tf import ranking
from l2rw_tf.fit import L2RWModel

CLASSES, FEATURES, EPOCHS = 3, 8, 5
PNG = b"\x89PNG\r\n\x1a\n"


def blobs(n, rng, centers):
    y = rng.integers(0, CLASSES, n)
    return (centers[y] + rng.normal(size=(n, FEATURES))).astype(np.float32), y


@pytest.fixture(scope="module")
def fitted():
    """A tiny MLP fitted by L2RW on 300 tabular examples, 40% of them (at random positions)
    given a wrong label, with a clean set of 30."""
    rng = np.random.default_rng(0)
    centers = 2.0 * rng.normal(size=(CLASSES, FEATURES))
    x, y = blobs(300, rng, centers)
    clean_x, clean_y = blobs(30, rng, centers)
    flipped = rng.random(len(y)) < 0.4
    y_noisy = np.where(flipped, (y + rng.integers(1, CLASSES, len(y))) % CLASSES, y)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(CLASSES)])
    trainer = L2RWModel(model, clean_data=(clean_x, clean_y))
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x, y_noisy, batch_size=30, epochs=EPOCHS, verbose=0)
    return trainer, x, y_noisy, flipped


def precision(ranked, flipped, k):
    return ranking.precision_at(flipped[ranked["position"]], k, ranked["tie_group"])


class FakeModel:
    def __init__(self, outputs):
        self.outputs = np.asarray(outputs, np.float32)

    def predict(self, x, batch_size=None, verbose=0):
        return self.outputs


class FakeTrainer:
    """What label_issues reads of an L2RWModel: example_weights(), model.predict and loss."""

    def __init__(self, outputs, mean_weight, zero_fraction=None, times_seen=None, loss=None):
        n = len(mean_weight)
        self.model, self.loss = FakeModel(outputs), loss
        self.stats = {"times_seen": np.full(n, 5) if times_seen is None else times_seen,
                      "mean_weight": np.asarray(mean_weight, np.float64),
                      "zero_fraction": np.zeros(n) if zero_fraction is None else zero_fraction}

    def example_weights(self):
        return self.stats


class Shuffled:
    """A fitted trainer whose per-example statistics are permuted across examples: weights that
    say nothing about the labels."""

    def __init__(self, trainer, permutation):
        self.model, self.loss = trainer.model, trainer.loss
        self.stats = {k: v[permutation] for k, v in trainer.example_weights().items()}

    def example_weights(self):
        return self.stats


# ---------------------------------------------------------------------------------------------
# On a real fit.

def test_the_ranking_finds_the_flipped_labels(fitted):
    trainer, x, y_noisy, flipped = fitted
    ranked = l2rw_tf.label_issues(trainer, x, y_noisy)
    n, k = len(y_noisy), int(flipped.sum())
    chance = flipped.mean()
    assert 0.35 < chance < 0.45
    assert precision(ranked, flipped, k) > chance + 0.2
    # The weights alone (no label probability) rank well above chance too.
    alone = ranking.rank_examples({"position": ranked["position"],
                                   "mean_weight": ranked["mean_weight"],
                                   "zero_fraction": ranked["zero_fraction"]})
    assert precision(alone, flipped, k) > chance + 0.2

    assert list(ranked) == ["rank", "position", "label", "predicted_label", "label_probability",
                            "mean_weight", "zero_fraction", "times_seen", "evidence", "flagged",
                            "tie_group", "tie_first_rank", "tie_last_rank"]
    assert all(len(column) == n for column in ranked.values())
    assert list(ranked["rank"]) == list(range(1, n + 1))
    assert sorted(ranked["position"]) == list(range(n))
    assert np.array_equal(ranked["label"], y_noisy[ranked["position"]])
    assert np.all(ranked["times_seen"] == EPOCHS)
    assert np.all(np.diff(ranked["evidence"]) >= 0)
    aligned = np.round(EPOCHS * (1 - ranked["zero_fraction"]))
    np.testing.assert_allclose(
        ranked["evidence"], np.log(ranked["label_probability"] / (1 - ranked["label_probability"]))
        + np.log((aligned + 1) / (EPOCHS + 1 - aligned)), rtol=1e-9)
    assert np.array_equal(ranked["flagged"], ranked["evidence"] < 0)
    # cleanlab's conventions: a mask by position and the flagged positions in rank order.
    mask = ranking.issue_mask(ranked)
    assert mask.sum() == ranked["flagged"].sum() and mask[ranked["position"]].tolist() == \
        ranked["flagged"].tolist()
    assert list(ranking.ranked_issue_indices(ranked)) == \
        [p for p, f in zip(ranked["position"], ranked["flagged"]) if f]
    assert flipped[mask].mean() > 0.6 and flipped[mask].sum() / flipped.sum() > 0.6
    # The weight-first order of before issue 23 stays one argument away.
    by_weight = l2rw_tf.label_issues(trainer, x, y_noisy, order="weight")
    assert np.all(np.diff(by_weight["mean_weight"]) >= 0) and "evidence" not in by_weight
    assert np.array_equal(by_weight["flagged"], by_weight["mean_weight"] == 0)
    stats = trainer.example_weights()
    assert np.array_equal(ranked["mean_weight"], stats["mean_weight"][ranked["position"]])
    # label_probability: the softmax of the logits (the loss says from_logits=True) at the label.
    logits = trainer.model.predict(x, verbose=0)
    probabilities = tf.nn.softmax(logits).numpy()[ranked["position"]]
    # (atol: a probability below float32's normal range may be flushed to 0 by one of the two.)
    np.testing.assert_allclose(ranked["label_probability"],
                               probabilities[np.arange(n), ranked["label"]], rtol=1e-5,
                               atol=1e-30)
    assert np.array_equal(ranked["predicted_label"], probabilities.argmax(axis=1))
    # The method on the trainer is the same function.
    method = trainer.label_issues(x, y_noisy)
    assert all(np.array_equal(method[c], ranked[c]) for c in ranked)


def test_shuffled_weights_score_chance(fitted):
    trainer, x, y_noisy, flipped = fitted
    k, rng = int(flipped.sum()), np.random.default_rng(1)
    shuffled = [Shuffled(trainer, rng.permutation(len(y_noisy))) for _ in range(20)]
    scores = [precision(l2rw_tf.label_issues(t, x, y_noisy, order="weight"), flipped, k)
              for t in shuffled]
    assert np.mean(scores) == pytest.approx(flipped.mean(), abs=0.04)
    # The default adds the model's own evidence, which the shuffle leaves intact: the ranking
    # survives weights that say nothing.
    scores = [precision(l2rw_tf.label_issues(t, x, y_noisy), flipped, k) for t in shuffled[:3]]
    assert min(scores) > flipped.mean() + 0.3


def test_example_ids_key_the_rows(fitted):
    trainer, x, y_noisy, _ = fitted
    ids = np.array([f"row{i}" for i in range(len(y_noisy))])
    ranked = l2rw_tf.label_issues(trainer, x, y_noisy, example_ids=ids)
    assert list(ranked)[:3] == ["rank", "position", "id"]
    assert np.array_equal(ranked["id"], ids[ranked["position"]])
    with pytest.raises(ValueError, match="example_ids has 3 entries for 300 examples"):
        l2rw_tf.label_issues(trainer, x, y_noisy, example_ids=ids[:3])


def test_errors_say_what_is_wrong(fitted):
    trainer, x, y_noisy, _ = fitted
    with pytest.raises(ValueError, match="x has 300 examples but y has 299"):
        l2rw_tf.label_issues(trainer, x, y_noisy[:-1])
    with pytest.raises(ValueError, match="last fitted on 300"):
        l2rw_tf.label_issues(trainer, x[:100], y_noisy[:100])
    with pytest.raises(ValueError, match="outside the model's 3 outputs"):
        l2rw_tf.label_issues(trainer, x, y_noisy + 1)
    with pytest.raises(ValueError, match="pass from_logits=True"):
        l2rw_tf.label_issues(trainer, x, y_noisy, from_logits=False)


def test_a_trainer_fitted_on_a_dataset_is_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    trainer = L2RWModel(model, clean_data=(x[:10], y[:10]))
    trainer.compile(optimizer="sgd",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="fitted on arrays"):  # never fitted
        l2rw_tf.label_issues(trainer, x, y)
    trainer.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(20), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="not on a tf.data.Dataset"):
        l2rw_tf.label_issues(trainer, x, y)


# ---------------------------------------------------------------------------------------------
# Ties and the model's outputs, on constructed statistics.

def test_ties_in_weight_follow_the_label_probability_never_the_position():
    """All weights equal: the order is that of the probability of the given label, which here
    falls with the position, so an index order would be exactly wrong."""
    n = 50
    p = np.linspace(0.1, 0.9, n)  # probability of class 0, the given label of every example
    trainer = FakeTrainer(np.stack([p, 1 - p], axis=1)[::-1], np.ones(n))
    ranked = l2rw_tf.label_issues(trainer, np.zeros((n, 2)), np.zeros(n, np.int64),
                                  from_logits=False)
    assert list(ranked["position"]) == list(range(n))[::-1]  # lowest probability first
    np.testing.assert_allclose(ranked["label_probability"], p, rtol=1e-6)
    assert list(ranked["tie_group"]) == list(range(n))
    assert np.array_equal(ranked["tie_first_rank"], ranked["rank"])

    # Weights and probabilities equal too: one tie group, in a seeded random order, not by
    # position; the first 40% (corrupted, as a block) score chance at every k.
    trainer = FakeTrainer(np.tile([[0.3, 0.7]], (n, 1)), np.ones(n))
    ranked = l2rw_tf.label_issues(trainer, np.zeros((n, 2)), np.zeros(n, np.int64),
                                  from_logits=False)
    order = list(ranked["position"])
    assert sorted(order) != order and sorted(order, reverse=True) != order
    assert np.all(ranked["tie_group"] == 0)
    assert np.all(ranked["tie_first_rank"] == 1) and np.all(ranked["tie_last_rank"] == n)
    block = np.arange(n) < 0.4 * n
    for k in (1, 10, 20, 37, n):
        assert precision(ranked, block, k) == pytest.approx(0.4)
    other = l2rw_tf.label_issues(trainer, np.zeros((n, 2)), np.zeros(n, np.int64),
                                 from_logits=False, seed=1)
    assert list(other["position"]) != order

    # order="weight": weight first, then probability, then the zero fraction (most often at
    # zero first).
    weights = np.array([0.0, 0.0, 0.0, 2.0, 0.5])
    outputs = np.array([[0.2, 0.8], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.9, 0.1]])
    zeros = np.array([0.5, 1.0, 1.0, 0.0, 0.2])
    ranked = l2rw_tf.label_issues(FakeTrainer(outputs, weights, zeros), np.zeros((5, 1)),
                                  np.zeros(5, np.int64), from_logits=False, order="weight")
    assert list(ranked["position"]) == [2, 0, 1, 4, 3]
    assert list(ranked["predicted_label"]) == [1, 1, 0, 0, 1]


def test_never_seen_examples_rank_last():
    weights = np.array([np.nan, 0.5, 1.0])
    ranked = l2rw_tf.label_issues(
        FakeTrainer(np.full((3, 2), 0.5), weights, np.array([np.nan, 0.0, 0.0]),
                    np.array([0, 2, 2])), np.zeros((3, 1)), np.zeros(3, np.int64),
        from_logits=False)
    assert list(ranked["position"]) == [1, 2, 0]


def test_the_evidence_follows_whichever_signal_speaks():
    """The default order adds the model's log-odds for the given label to the weights' (the
    aligned fraction by Laplace's rule). Where one signal says nothing, the other decides alone:
    a model of one constant output leaves the weights' order, weights that never vary leave the
    probability's."""
    rng = np.random.default_rng(0)
    n, seen = 400, 10
    corrupted = np.zeros(n, bool)
    corrupted[:160] = True                     # a block of positions, as the noise module does
    labels = np.zeros(n, np.int64)
    # Uninformative model (probability 0.3 for everyone), informative weights: corrupted
    # examples aligned at 0-3 of their 10 steps, clean ones at 7-10.
    aligned = np.where(corrupted, rng.integers(0, 4, n), rng.integers(7, 11, n))
    zeros = 1 - aligned / seen
    flat = np.tile([[0.3, 0.7]], (n, 1))
    ranked = l2rw_tf.label_issues(FakeTrainer(flat, aligned / seen, zeros, np.full(n, seen)),
                                  np.zeros((n, 1)), labels, from_logits=False)
    assert precision(ranked, corrupted, 160) == 1.0
    assert ranked["evidence"][0] < ranked["evidence"][-1]
    # Informative model, uninformative weights (every example aligned at every step, weight 1).
    p = np.where(corrupted, rng.uniform(0.01, 0.4, n), rng.uniform(0.6, 0.99, n))
    outputs = np.stack([p, 1 - p], axis=1)
    ranked = l2rw_tf.label_issues(FakeTrainer(outputs, np.ones(n), np.zeros(n), np.full(n, seen)),
                                  np.zeros((n, 1)), labels, from_logits=False)
    assert precision(ranked, corrupted, 160) == 1.0
    assert list(ranked["position"]) == list(np.argsort(p))
    by_weight = l2rw_tf.label_issues(
        FakeTrainer(outputs, np.ones(n), np.zeros(n), np.full(n, seen)), np.zeros((n, 1)),
        labels, from_logits=False, order="weight")
    assert precision(by_weight, corrupted, 160) == 1.0   # the probability breaks its one tie
    # The flag: the combined odds below 1. Always aligned in 10 steps is odds of 11 for the
    # label, so the model must give it less than 1/12 to flag it.
    assert np.array_equal(ranking.issue_mask(ranked), p / (1 - p) < 1 / 11)


def test_the_weights_say_as_much_as_they_were_measured():
    """Never aligned in 50 steps is stronger evidence than never aligned in 2: at an equal
    probability the first ranks first."""
    outputs = np.array([[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.95, 0.05]])
    trainer = FakeTrainer(outputs, np.array([0.0, 0.0, 1.0, 1.0]),
                          np.array([1.0, 1.0, 0.0, 0.0]), np.array([2, 50, 50, 50]))
    ranked = l2rw_tf.label_issues(trainer, np.zeros((4, 1)), np.zeros(4, np.int64),
                                  from_logits=False)
    assert list(ranked["position"]) == [1, 0, 2, 3]
    np.testing.assert_allclose(ranked["evidence"][:2],
                               [np.log(0.6 / 0.4) + np.log(1 / 51),
                                np.log(0.6 / 0.4) + np.log(1 / 3)], rtol=1e-6)
    assert list(ranked["flagged"]) == [True, True, False, False]
    with pytest.raises(ValueError, match="order='best'"):
        l2rw_tf.label_issues(trainer, np.zeros((4, 1)), np.zeros(4, np.int64),
                             from_logits=False, order="best")


def test_the_output_is_read_as_the_loss_says():
    y = np.array([0, 1, 2, 1])
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5],
                              [0.3, 0.4, 0.3]])
    logits = np.log(probabilities) + 1.5
    x = np.zeros((4, 1))
    expected = probabilities[np.arange(4), y]
    for loss, outputs in ((keras.losses.SparseCategoricalCrossentropy(), probabilities),
                          ("sparse_categorical_crossentropy", probabilities),
                          (keras.losses.sparse_categorical_crossentropy, probabilities),
                          (keras.losses.SparseCategoricalCrossentropy(from_logits=True), logits),
                          (lambda t, p: p, probabilities),  # says nothing: rows sum to 1
                          (lambda t, p: p, logits),         # says nothing: not probabilities
                          (None, logits)):
        ranked = l2rw_tf.label_issues(FakeTrainer(outputs, np.arange(4.0), loss=loss), x, y,
                                      order="weight")
        np.testing.assert_allclose(ranked["label_probability"], expected, rtol=1e-5)
    # An explicit from_logits overrides the loss; one-hot labels are their argmax.
    onehot = np.eye(3)[y]
    ranked = l2rw_tf.label_issues(FakeTrainer(logits, np.arange(4.0), loss="mse"), x, onehot,
                                  from_logits=True, order="weight")
    np.testing.assert_allclose(ranked["label_probability"], expected, rtol=1e-5)
    assert list(ranked["label"]) == list(y) and list(ranked["predicted_label"]) == [0, 2, 2, 1]


def test_a_single_output_is_a_sigmoid():
    positive = np.array([0.9, 0.2, 0.6, 0.5])
    labels = np.array([[1.0], [1.0], [0.0], [0.0]])
    expected = [0.9, 0.2, 0.4, 0.5]
    logit = np.log(positive / (1 - positive))[:, None]
    for loss, outputs in ((keras.losses.BinaryCrossentropy(from_logits=True), logit),
                          ("binary_crossentropy", positive[:, None])):
        ranked = l2rw_tf.label_issues(FakeTrainer(outputs, np.arange(4.0), loss=loss),
                                      np.zeros((4, 1)), labels, order="weight")
        np.testing.assert_allclose(ranked["label_probability"], expected, rtol=1e-5)
        assert list(ranked["predicted_label"]) == [1, 0, 1, 0]
        assert list(ranked["label"]) == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="must be 0 or 1"):
        l2rw_tf.label_issues(FakeTrainer(logit, np.arange(4.0)), np.zeros((4, 1)), labels * 2)


def test_ranking_imports_neither_tensorflow_nor_matplotlib():
    code = ("import sys, l2rw_tf.ranking; "
            "sys.exit('tensorflow' in sys.modules or 'matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# ---------------------------------------------------------------------------------------------
# The contact sheet.

@pytest.mark.parametrize("kind", ["gray_uint8", "gray_channel_float", "rgb_float", "rgb_uint8",
                                  "rgb_standardised"])
def test_contact_sheet_writes_a_png(tmp_path, kind):
    n, rng = 12, np.random.default_rng(0)
    shape = {"gray_uint8": (n, 8, 8), "gray_channel_float": (n, 8, 8, 1)}.get(kind, (n, 8, 8, 3))
    images = rng.random(shape)
    if kind.endswith("uint8"):
        images = (255 * images).astype(np.uint8)
    elif kind == "rgb_standardised":
        images = (images - 0.5) * 4
    outputs = rng.dirichlet(np.ones(3), size=n)
    ranked = l2rw_tf.label_issues(FakeTrainer(outputs, rng.random(n)), np.zeros((n, 1)),
                                  rng.integers(0, 3, n), from_logits=False)
    path = tmp_path / "sheet" / f"{kind}.png"
    assert l2rw_tf.contact_sheet(images, ranked, str(path), k=9,
                                 class_names=["cat", "dog", "ship"]) == str(path)
    assert path.read_bytes()[:8] == PNG


def test_contact_sheet_refuses_what_it_cannot_draw(tmp_path):
    ranked = {"position": np.array([5])}
    with pytest.raises(ValueError, match=r"give \[N, H, W\]"):
        l2rw_tf.contact_sheet(np.zeros((3, 8, 8, 2)), ranked, str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="images has 3"):
        l2rw_tf.contact_sheet(np.zeros((3, 8, 8)), ranked, str(tmp_path / "a.png"))
