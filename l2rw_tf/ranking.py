"""The mislabel ranking: training examples ordered likeliest mislabelled first, ties told honestly.

    ranked = l2rw_tf.label_issues(trainer, x, y)        # a fitted L2RWModel, its training arrays
    ranked["position"][:20]                             # the 20 likeliest mislabelled examples
    l2rw_tf.contact_sheet(x, ranked, "suspects.png")    # the top 64 of them, for image data

The ranking sorts by a key of each example's own scores (`ranking_key`). By default ("evidence",
issue 23) by the combined log-odds that the given label is right: the trained model's
probability of the given label (`label_probability`) and L2RW's verdicts during training (the
fraction of steps the example's weight was above 0, by Laplace's rule) added as independent
evidence, then the mean weight; `flagged` marks the examples whose combined odds are below 1
(results/label_issues/README.md has the comparison). order="weight" is the ranking before it:
lowest mean weight first, then lowest label probability, then most often at weight zero. Never
by the example's index or position: label noise often corrupts a contiguous block of indices
(noise.corrupt_labels does), and L2RW gives many examples a mean weight of exactly 0, so an index
tie-break would decide the precision. Examples equal in the whole key are one tie group, put in
a seeded random order; the precision and recall of a ranking are expectations over a random
order within each group (`expected_hits`), so a ranking whose scores say nothing scores chance,
the corrupted fraction.

plots.py uses these functions for the runs of the command line (example_weights.csv);
`label_issues` ranks the examples of a Keras `fit` (fit.L2RWModel). Numpy only at import time:
matplotlib is imported by `contact_sheet`, Keras only to resolve a loss given by name.
"""
import inspect
import math
import os
import textwrap

import numpy as np

# The optional secondary score: the final model's probability of each example's given label.
SECONDARY_SCORE = "label_probability"

# The orders of the ranking (`ranking_key`); "evidence" is the default.
ORDERS = ("evidence", "weight", "probability")
DEFAULT_ORDER = "evidence"


def has_secondary_score(columns):
    """Whether the run recorded the final model's probability of the given labels (a column
    with at least one value)."""
    return SECONDARY_SCORE in columns and bool(np.isfinite(columns[SECONDARY_SCORE]).any())


def _logit(q):
    """log(q / (1 - q)), -inf at 0 and +inf at 1 (no warnings); nan stays nan."""
    q = np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(q) - np.log1p(-q)


def aligned_fraction(columns):
    """L2RW's own estimate of the probability that an example's label is right: the fraction of
    the steps it was in a batch at which its gradient agreed with the clean one (weight above
    0), by Laplace's rule of succession, (aligned + 1) / (seen + 2). So an example seen twice,
    never aligned, gets 1/4, one seen 50 times, never aligned, 1/52: the weights speak as
    strongly as the number of times they were measured allows. nan for an example never seen."""
    seen = np.asarray(columns["times_seen"], np.float64)
    zero = np.asarray(columns["zero_fraction"], np.float64)
    aligned = np.round(seen * (1.0 - zero))
    with np.errstate(invalid="ignore"):
        fraction = (aligned + 1.0) / (seen + 2.0)
    return np.where(seen > 0, fraction, np.nan)


def evidence_score(columns):
    """The combined log-odds that the given label is right (lowest = likeliest mislabelled):
    logit(label_probability) + logit(`aligned_fraction`). Two estimates of the same probability
    from two sources, the final model's belief and the weights' verdicts during training, added
    as independent evidence (naive Bayes, flat prior): whichever is the more decided one leads,
    so a confident model (probabilities near 0 or 1) decides where it is confident and the
    weights decide where it is not, and the weights' say grows with how often each example was
    weighted. Below 0: the two together say the label is more likely wrong than right (the
    `flagged` cut). nan (ranked last) where either is missing."""
    score = _logit(columns[SECONDARY_SCORE]) + _logit(aligned_fraction(columns))
    missing = ~np.isfinite(np.asarray(columns["mean_weight"], np.float64))
    return np.where(missing, np.nan, score)


def resolve_order(columns, order=None):
    """The order actually used: `order` (default DEFAULT_ORDER), except that "evidence" needs
    the label probability and times_seen (a run written before they existed falls back to
    "weight")."""
    order = DEFAULT_ORDER if order is None else order
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: choose one of {', '.join(ORDERS)}")
    if order in ("evidence", "probability") and not has_secondary_score(columns):
        return "weight"
    if order == "evidence" and "times_seen" not in columns:
        return "weight"
    return order


def ranking_key(columns, order=None):
    """The scores the mislabelled ranking sorts by, ascending, most important first, as
    [(name, column)]. Only scores of the example itself: its index is never one, since the index
    says nothing about an example's label but the noise corrupts a contiguous block of indices
    (noise.corrupt_labels), so an index tie-break turns a tie into a fake precision of 1 or 0.
    Examples equal in every score are one tie group.

    order "evidence" (default, issue 23): `evidence_score` (the model's probability of the given
    label and the weights' aligned fraction, as added log-odds), then the mean weight, then the
    zero fraction (negated: most often first). "weight" (the ranking before issue 23): the mean
    weight (L2RW's verdict), then the label probability when the run recorded it, then the zero
    fraction. "probability": the label probability alone, then the mean weight. Without a
    label probability (old runs) every order is "weight" (`resolve_order`)."""
    order = resolve_order(columns, order)
    weight = ("mean_weight", columns["mean_weight"])
    zeros = ("-zero_fraction", -columns["zero_fraction"])
    if order == "evidence":
        return [("evidence", evidence_score(columns)), weight, zeros]
    if order == "probability":
        return [(SECONDARY_SCORE, columns[SECONDARY_SCORE]), weight, zeros]
    key = [weight]
    if has_secondary_score(columns):
        key.append((SECONDARY_SCORE, columns[SECONDARY_SCORE]))
    key.append(zeros)
    return key


def flagged(columns, order=None):
    """cleanlab's boolean convention beside the ranking: which examples the order itself calls
    mislabelled, with a cut that needs no parameter. "evidence": combined log-odds below 0 (the
    label more likely wrong than right); "probability": the model gives the label less than 1/2;
    "weight": mean weight exactly 0 (never once aligned with the clean gradient)."""
    order = resolve_order(columns, order)
    with np.errstate(invalid="ignore"):
        if order == "evidence":
            return evidence_score(columns) < 0
        if order == "probability":
            return np.asarray(columns[SECONDARY_SCORE], np.float64) < 0.5
        return np.asarray(columns["mean_weight"], np.float64) == 0


def rank_by_weight(columns, seed=0, order=None):
    """Order of the examples, likeliest mislabelled first: ascending `ranking_key` (`order`,
    default "evidence"; "weight": lowest mean weight, then lowest probability of the given label,
    then most often at zero). Examples tied in the whole key are put in a random order (fixed
    `seed`, so the files are reproducible), never by index; the reported precision does not
    depend on that order (`expected_hits`). Missing (nan) scores sort last within their key."""
    return rank_by([column for _, column in ranking_key(columns, order)], seed)


def rank_by(key, seed=0):
    """Order by ascending `key` (columns, most important first), ties in a seeded random order
    (never by index); nan sorts last within its column."""
    shuffle = np.random.default_rng(seed).permutation(len(key[0]))
    return np.lexsort([shuffle] + list(key)[::-1])


def tie_groups(key_ranked):
    """Tie group of each position of a ranking, 0, 1, ... in rank order, from the key columns
    (already in rank order): a new group starts wherever any score differs from the one
    before (two missing scores are equal)."""
    n = len(key_ranked[0]) if key_ranked else 0
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
    for column in key_ranked:
        a, b = column[1:], column[:-1]
        new[1:] |= ~((a == b) | (np.isnan(a) & np.isnan(b)))
    return np.cumsum(new) - 1


def expected_hits(is_noisy_ranked, k, groups=None):
    """Expected number of corrupted examples among the first k of a ranking if every tie group
    were ordered at random: the examples ranked strictly before the tie group at rank k count
    fully, and that group gives its corrupted fraction times its slots up to k. Without
    `groups`, no ties: the plain count."""
    noisy = np.asarray(is_noisy_ranked, dtype=np.float64)
    if groups is None:
        return float(noisy[:k].sum())
    groups = np.asarray(groups)
    g = groups[k - 1]
    start = int(np.searchsorted(groups, g, side="left"))
    end = int(np.searchsorted(groups, g, side="right"))
    return float(noisy[:start].sum() + (k - start) * noisy[start:end].mean())


def precision_at(is_noisy_ranked, k, groups=None):
    """Fraction of corrupted examples among the first k of a ranking, ties (`groups`, see
    `tie_groups`) in a random order: `expected_hits` / k."""
    return expected_hits(is_noisy_ranked, k, groups) / k


def tie_across(groups, k):
    """(first rank, last rank), 1-based, of the tie group holding both rank k and rank k + 1,
    or None when rank k ends a group (then the order within ties does not matter at k)."""
    if k >= len(groups) or groups[k] != groups[k - 1]:
        return None
    return (int(np.searchsorted(groups, groups[k], side="left")) + 1,
            int(np.searchsorted(groups, groups[k], side="right")))


def rank_examples(columns, seed=0, order=None):
    """`columns` (equal-length numpy columns with at least "mean_weight" and "zero_fraction",
    optionally "label_probability" and "times_seen", any others carried along) in rank order,
    likeliest mislabelled first (`ranking_key` of `order`, default "evidence"), plus "rank"
    (1-based), "flagged" (`flagged`: the examples the order calls mislabelled), "tie_group"
    (0, 1, ... in rank order: the examples equal in the whole key) and "tie_first_rank" /
    "tie_last_rank" (the ranks the example's tie group spans; its order within them is random).
    With order "evidence", also "evidence" (`evidence_score`)."""
    columns = {k: np.asarray(v) for k, v in columns.items()}
    for name in ("mean_weight", "zero_fraction", SECONDARY_SCORE):
        if name in columns:
            columns[name] = columns[name].astype(np.float64)
    order = resolve_order(columns, order)
    if order == "evidence":
        columns["evidence"] = evidence_score(columns)
    columns["flagged"] = flagged(columns, order)
    permutation = rank_by_weight(columns, seed, order)
    ranked = {k: v[permutation] for k, v in columns.items()}
    groups = tie_groups([column for _, column in ranking_key(ranked, order)])
    return {"rank": np.arange(1, len(permutation) + 1), **ranked, "tie_group": groups,
            "tie_first_rank": np.searchsorted(groups, groups, side="left") + 1,
            "tie_last_rank": np.searchsorted(groups, groups, side="right")}


def issue_mask(ranked):
    """cleanlab's `find_label_issues` convention: a boolean mask by position (the row order of
    x and y), True for the flagged examples, from a ranking of `label_issues`."""
    mask = np.zeros(len(ranked["position"]), dtype=bool)
    mask[np.asarray(ranked["position"])[np.asarray(ranked["flagged"], bool)]] = True
    return mask


def ranked_issue_indices(ranked):
    """cleanlab's `return_indices_ranked_by` convention: the positions of the flagged examples,
    likeliest mislabelled first."""
    return np.asarray(ranked["position"])[np.asarray(ranked["flagged"], bool)]


# ---------------------------------------------------------------------------------------------
# The examples of a Keras fit (fit.L2RWModel).

def _loss_from_logits(loss):
    """What the compiled loss says of the model's outputs: True (logits), False (probabilities)
    or None (the loss does not say, e.g. a custom function or no loss)."""
    if loss is None:
        return None
    if isinstance(loss, str):
        import keras
        try:
            loss = keras.losses.get(loss)
        except ValueError:
            return None
    get_config = getattr(loss, "get_config", None)
    if callable(get_config) and hasattr(loss, "call"):  # a keras.losses.Loss
        try:
            value = get_config().get("from_logits")
        except Exception:  # a custom Loss whose config cannot be built says nothing
            return None
        return None if value is None else bool(value)
    if callable(loss):  # a loss function, e.g. keras.losses.sparse_categorical_crossentropy
        try:
            parameter = inspect.signature(loss).parameters.get("from_logits")
        except (TypeError, ValueError):
            return None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return bool(parameter.default)
    return None


def _look_like_probabilities(outputs):
    """The fallback rule when the loss does not say: every output finite and in [0, 1] and, for
    several classes, each row summing to 1 (to 1e-3)."""
    if not np.all(np.isfinite(outputs)) or outputs.min() < 0 or outputs.max() > 1:
        return False
    return outputs.shape[1] == 1 or bool(np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _given_labels(y, num_outputs):
    """The given class of each example, as integers: y as sparse class ids ([N] or [N, 1]), or
    one-hot / soft rows ([N, classes], their argmax); 0/1 for a single-output model."""
    y = np.asarray(y)
    if num_outputs == 1:
        labels = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
        if labels.ndim != 1:
            raise ValueError(f"y has shape {y.shape}; a single-output model needs one 0/1 label "
                             f"per example ([N] or [N, 1])")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("label_issues ranks classification examples: with a single output "
                             "(sigmoid / binary cross-entropy) the labels must be 0 or 1")
        return labels.astype(np.int64)
    if y.ndim == 2 and y.shape[1] == num_outputs and num_outputs > 1:
        return np.argmax(y, axis=1).astype(np.int64)  # one-hot (categorical cross-entropy)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"y has shape {y.shape}; give class ids [N] or one-hot rows "
                         f"[N, {num_outputs}] for the model's {num_outputs} outputs")
    if not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y)):
        raise ValueError("y holds non-integer values; give class ids or one-hot rows")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_outputs):
        raise ValueError(f"y holds class ids in [{labels.min()}, {labels.max()}], outside the "
                         f"model's {num_outputs} outputs")
    return labels


def _num_examples(x):
    """Examples in `x`: an array, or a nest (dict / list / tuple) of arrays of one length."""
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        lengths = {_num_examples(v) for v in x}
        if len(lengths) != 1:
            raise ValueError(f"the inputs in x have different lengths {sorted(lengths)}")
        return lengths.pop()
    return len(x)


def label_issues(trainer, x, y, batch_size=256, from_logits=None, example_ids=None, seed=0,
                 order=None):
    """The training examples of a fitted `L2RWModel`, ranked likeliest mislabelled first.

    trainer: an `l2rw_tf.L2RWModel` fitted on arrays (`trainer.fit(x, y, ...)`; a fit on a
        `tf.data.Dataset` keeps no per-example statistics, and is refused). x, y: the training
        arrays it was fitted on, in the same order (x may be a dict or list of arrays, as fit
        takes it; y class ids [N] or [N, 1], one-hot rows [N, classes], or 0/1 labels for a
        single-output model). batch_size: for `trainer.model.predict`.
    from_logits: how to read the model's outputs. None (default): as the compiled loss says
        (the `from_logits` of Keras' cross-entropy losses, given by object, function or name);
        if the loss does not say (a custom function), the outputs are taken as probabilities
        when all are in [0, 1] and, for several classes, every row sums to 1, else as logits.
        True: logits (softmax over several outputs, sigmoid of a single one). False: already
        probabilities (a softmax / sigmoid last layer); outputs outside [0, 1] are refused.
    example_ids: optional, one id per example (any numpy-able values, e.g. file names): an "id"
        column keys the rows by them. seed: the (random) order within tie groups.
    order: "evidence" (default), "weight" (the order before issue 23) or "probability"; see
        `ranking_key`.

    Returns a dict of numpy columns, one row per training example, in rank order (rank 1 is the
    likeliest mislabelled; `pandas.DataFrame(result)` makes it a table):
        rank             1, 2, ... n
        position         the example's position in x and y (and in `trainer.example_weights()`)
        id               example_ids[position] (only with example_ids)
        label            the given label (class id; 0/1 for a single output)
        predicted_label  the trained model's class (argmax; probability > 0.5 for one output)
        label_probability  the trained model's probability of the given label (inference mode)
        mean_weight      mean L2RW weight over the steps the example was in a batch, relative
                         to uniform (1.0 = 1/batch size); nan if never seen (ranked last)
        zero_fraction    fraction of those steps at weight exactly 0
        times_seen       steps the example was in a batch
        evidence         the combined log-odds that the label is right (`evidence_score`):
                         logit(label_probability) + logit((aligned + 1) / (times_seen + 2)),
                         aligned = the steps at weight above 0 (order "evidence" only)
        flagged          True for the examples the ranking calls mislabelled (`flagged`:
                         evidence below 0 by default); `issue_mask(result)` gives it by position,
                         `ranked_issue_indices(result)` their positions in rank order (cleanlab's
                         two output conventions)
        tie_group        0, 1, ...: examples equal in the whole key (ranked in a seeded random
                         order, never by position)
        tie_first_rank, tie_last_rank  the ranks the example's tie group spans

    The key is `ranking_key`: by default the evidence, then the mean weight, then the zero
    fraction (most often at zero first). To score the ranking against known corrupted labels
    `is_noisy` (by position): `precision_at(is_noisy[r["position"]], k, r["tie_group"])`, the
    expectation over random orders within ties.
    """
    try:
        stats = trainer.example_weights()
    except ValueError as e:
        raise ValueError(f"label_issues needs per-example weight statistics, which "
                         f"L2RWModel.fit keeps only when fitted on arrays (x, y), not on a "
                         f"tf.data.Dataset: fit the trainer on arrays first ({e})") from None
    n = _num_examples(x)
    if len(np.asarray(y)) != n:
        raise ValueError(f"x has {n} examples but y has {len(np.asarray(y))}")
    if len(stats["mean_weight"]) != n:
        raise ValueError(f"x has {n} examples but the trainer was last fitted on "
                         f"{len(stats['mean_weight'])}: give the arrays it was fitted on, in the "
                         f"same order")
    if example_ids is not None:
        example_ids = np.asarray(example_ids)
        if len(example_ids) != n:
            raise ValueError(f"example_ids has {len(example_ids)} entries for {n} examples")
    if from_logits not in (None, True, False):
        raise ValueError(f"from_logits={from_logits!r}: give None (from the loss), True or False")

    outputs = trainer.model.predict(x, batch_size=batch_size, verbose=0)
    if isinstance(outputs, (list, tuple, dict)):
        raise ValueError("label_issues needs a model of one output (class scores)")
    outputs = np.asarray(outputs, np.float64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.ndim != 2 or outputs.shape[0] != n:
        raise ValueError(f"the model's outputs have shape {outputs.shape}; label_issues needs "
                         f"one row of class scores per example ([{n}, classes] or [{n}, 1])")
    num_outputs = outputs.shape[1]
    labels = _given_labels(y, num_outputs)

    if from_logits is None:
        from_logits = _loss_from_logits(getattr(trainer, "loss", None))
    if from_logits is None:
        from_logits = not _look_like_probabilities(outputs)
    if from_logits:
        probabilities = _sigmoid(outputs) if num_outputs == 1 else _softmax(outputs)
    else:
        if outputs.size and (not np.all(np.isfinite(outputs)) or outputs.min() < -1e-6
                             or outputs.max() > 1 + 1e-6):
            raise ValueError("from_logits=False, but the model's outputs are not in [0, 1]: "
                             "they are logits, pass from_logits=True")
        probabilities = np.clip(outputs, 0.0, 1.0)
    if num_outputs == 1:
        positive = probabilities[:, 0]
        label_probability = np.where(labels == 1, positive, 1.0 - positive)
        predicted = (positive > 0.5).astype(np.int64)
    else:
        label_probability = probabilities[np.arange(n), labels]
        predicted = np.argmax(probabilities, axis=1).astype(np.int64)

    columns = {"position": np.arange(n, dtype=np.int64)}
    if example_ids is not None:
        columns["id"] = example_ids
    columns.update({"label": labels, "predicted_label": predicted,
                    SECONDARY_SCORE: label_probability,
                    "mean_weight": np.asarray(stats["mean_weight"], np.float64),
                    "zero_fraction": np.asarray(stats["zero_fraction"], np.float64),
                    "times_seen": np.asarray(stats["times_seen"], np.int64)})
    return rank_examples(columns, seed, order)


# ---------------------------------------------------------------------------------------------
# A contact sheet of the suspects.

def _displayable(tiles):
    """Tiles ([k, H, W] or [k, H, W, 3|4]) as floats in [0, 1]: integers and floats in
    (1, 255] divided by 255, floats in [0, 1] as they are, anything else (e.g. standardised
    images) stretched to [0, 1] tile by tile."""
    values = tiles.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if np.issubdtype(tiles.dtype, np.integer) and lo >= 0 and hi <= 255:
        return values / 255.0
    if lo >= 0 and hi <= 1:
        return values
    if lo >= 0 and hi <= 255 and np.all(np.isfinite(values)):
        return values / 255.0
    axes = tuple(range(1, values.ndim))
    low = np.nanmin(values, axis=axes, keepdims=True)
    span = np.nanmax(values, axis=axes, keepdims=True) - low
    return np.clip((values - low) / np.where(span > 0, span, 1.0), 0.0, 1.0)


def contact_sheet(images, ranked, path, k=64, class_names=None):
    """A PNG grid of the top `k` suspects of a ranking (`label_issues`' result): each tile the
    example's image, titled with its rank and position (or id), its given and predicted label
    (the title in red when they differ) and its mean weight and probability of the given label.

    images: the training images, by position (the x given to `label_issues`): [N, H, W] or
        [N, H, W, 1] grayscale, [N, H, W, 3] RGB (or 4, RGBA); uint8 / integer in [0, 255] or
        float in [0, 1] or [0, 255] (other ranges, e.g. standardised images, are stretched per
        tile). class_names: a list or dict from class id to name. Returns `path`."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
        raise ValueError(f"images have shape {images.shape}; give [N, H, W], [N, H, W, 1] or "
                         f"[N, H, W, 3]")
    if int(k) < 1:
        raise ValueError(f"k={k} must be at least 1")
    positions = np.asarray(ranked["position"])[:int(k)]
    if not len(positions):
        raise ValueError("the ranking is empty")
    if positions.max() >= len(images) or positions.min() < 0:
        raise ValueError(f"the ranking holds position {int(positions.max())} but images has "
                         f"{len(images)}: give the training images the ranking was made on")
    tiles = _displayable(images[positions])
    gray = tiles.ndim == 3

    def name(label):
        if class_names is None:
            return str(label)
        try:
            return str(class_names[int(label)])
        except (KeyError, IndexError):
            return str(label)

    from matplotlib.figure import Figure  # no pyplot: no backend or global state touched

    count = len(positions)
    cols = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / cols))
    fig = Figure(figsize=(1.9 * cols, 2.15 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        ax.imshow(tiles[i], cmap="gray" if gray else None, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        label, predicted = ranked["label"][i], ranked["predicted_label"][i]
        key = f"id {ranked['id'][i]}" if "id" in ranked else f"pos {int(positions[i])}"
        ax.set_title(f"#{int(ranked['rank'][i])} {key}\n"
                     f"given {name(label)} pred {name(predicted)}\n"
                     f"w {float(ranked['mean_weight'][i]):.3g} "
                     f"p {float(ranked[SECONDARY_SCORE][i]):.2f}",
                     fontsize=7, color="tab:red" if label != predicted else "black")
    fig.suptitle(textwrap.fill("Likeliest mislabelled first: w = mean L2RW weight (1 = uniform), "
                               "p = the model's probability of the given label; red: the model "
                               "predicts another label", width=max(30, 22 * cols)), fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path
