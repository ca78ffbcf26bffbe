"""Driver 2: L2RW through Keras `Model.fit`, for any Keras model, loss and data.

    trainer = l2rw_tf.L2RWModel(model, clean_data=(clean_x, clean_y))
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    trainer.fit(noisy_x, noisy_y, batch_size=100, epochs=20, validation_data=(test_x, test_y))

`L2RWModel` wraps the user's model: its `train_step` is the L2RW step of step.py (the one the
command line trains with), on the compiled loss taken per example; `evaluate`, `predict` and
every metric are the wrapped model's, and `trainer.model` is the trained model itself, to use and
save without the wrapper. The clean set is drawn in batches of its own (`clean_batch_size`),
reshuffled every pass, endlessly, beside the noisy batches that `fit` is given: `fit` zips the two
datasets, as keras-io's SimCLR example feeds two streams.

Under a `tf.distribute` strategy (build the model and the wrapper, and compile, in its scope) Keras
splits each noisy and each clean batch over the replicas and runs `train_step` on each; the step
is step.py's, whose cross-replica reductions make the weights and the update those of one device
on the whole batch (distribute.py). The clean batch size must be a multiple of the replica count.

Callbacks, saving and resuming (TensorBoard, ModelCheckpoint, EarlyStopping, BackupAndRestore):
see the `L2RWModel` docstring.

What the progress bar, `History` and the TensorBoard callback show besides the compiled metrics:
`zero_weight_fraction` (examples L2RW gave weight 0), `effective_sample_size` (1/Σw², the number
of equally weighted examples the weights are worth; 0 when all are zero) and, for every group
named in `weight_on`, `weight_on_<name>`, the weight mass on that group's examples.
"""
import keras
import numpy as np
import tensorflow as tf

from l2rw_tf import distribute, precision, reweight
from l2rw_tf.step import StepConfig, step_gradients


# L2RWModel's algorithms: the StepConfig fields each sets (see the `algorithm` argument).
ALGORITHMS = {"select": {"meta_dropout": False, "weighting": "equal"},
              "calibrated": {"meta_dropout": False, "weighting": "calibrated"},
              "paper": {"meta_dropout": True, "weighting": "proportional"}}


def choose_meta_grad(model, replicas=1):
    """The fastest exact meta-gradient for `model`: `layerwise` where it applies (a chain of
    Dense / Conv2D layers without BatchNorm or dropout), else `jvp` (results/bench), except on
    several replicas with synchronized BatchNorm, through whose all-reduce forward mode does not
    differentiate, and on recurrent models (`has_recurrent_layer`): `lookahead`."""
    try:
        reweight.layerwise_layers(model)
    except (ValueError, AttributeError):
        synchronized = any(getattr(layer, "synchronized", False)
                           for layer in model._flatten_layers())  # noqa: SLF001
        if has_recurrent_layer(model) or (replicas > 1 and synchronized):
            return "lookahead"
        return "jvp"
    return "layerwise"


def has_recurrent_layer(model):
    """True when `model` holds a recurrent layer (any `keras.layers.RNN`: LSTM, GRU, SimpleRNN,
    also inside Bidirectional). Traced, its loop writes every time step to a TensorArray, and
    TensorFlow's forward mode (`ForwardAccumulator`, the `jvp` method) fails on TensorArrays in a
    while loop ("dtype variant is not compatible with int64"; eager, where the loop is Python, it
    works): `lookahead`, reverse mode only, runs there."""
    return any(isinstance(layer, keras.layers.RNN)
               for layer in model._flatten_layers())  # noqa: SLF001


def per_example(loss):
    """`loss` (what `compile` takes: a name, a `keras.losses.Loss` or a function of (y_true,
    y_pred)) as a function giving one loss per example: unreduced, and averaged over any axes
    beyond the first (a per-timestep or per-pixel loss becomes the example's mean)."""
    if loss is None:
        raise ValueError("L2RWModel.compile needs a loss: L2RW weighs each example by its loss "
                         "gradient")
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError("L2RWModel supports one loss on one output; a model of several losses "
                         "(multi-output) is not supported: combine them into one loss function")
    loss = keras.losses.get(loss)
    values_of = loss.call if isinstance(loss, keras.losses.Loss) else loss

    def per_example_loss(y_true, y_pred):
        # In float32 from a mixed policy's half-precision outputs, as Keras' Loss.__call__
        # computes it (`call`, which gives the values per example, does not cast).
        y_pred = tf.nest.map_structure(reweight.at_least_float32, y_pred)
        values = tf.convert_to_tensor(values_of(y_true, y_pred))
        if values.shape.rank == 0:
            raise ValueError("the loss returns a scalar; L2RW needs one value per example "
                             "(a keras.losses.Loss, or a function without reduction)")
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    return per_example_loss


def _length(nest, what="the arrays given to fit"):
    """The common first dimension of the arrays in `nest` (refused when they differ)."""
    lengths = {len(a) for a in tf.nest.flatten(nest)}
    if len(lengths) != 1:
        raise ValueError(f"{what} have different lengths {sorted(lengths)}")
    return lengths.pop()


def _gather(arrays, index):
    return tf.nest.map_structure(lambda a: tf.gather(a, index), arrays)


def _order_seed(seed, key, salt):
    """The stateless seed of one order: (seed, key) folded with `salt`."""
    return tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), tf.cast(key, tf.int64)]), salt)


def _permutation(size, seed):
    return tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), seed=seed)


def _batches_of(order, arrays, batch, drop_remainder=False):
    """(index batch, arrays) pairs: the index stream `order` (unbatched int64 indices) in
    batches, each beside the whole `arrays`, to gather from: the arrays are fed as one element
    (as Keras' own array adapter does), not captured in the pipeline's graph."""
    index = order.batch(batch, drop_remainder=drop_remainder)
    return tf.data.Dataset.zip((index, tf.data.Dataset.from_tensors(arrays).repeat()))


class EpochKey(keras.callbacks.Callback):
    """The optimizer's step count at the start of each epoch, in a variable (`key`) that keys the
    orders of that epoch's batches (`fit`'s noisy and clean ones, `noisy_batches`').

    tf.data cannot read the optimizer's count itself: it reads it when the epoch's first batch is
    drawn, and nothing in Keras' train function makes the first step's increment of the count
    wait for that draw (the two touch different resources), so the read would race with the
    increment (the order of step 0 or of step 1, run by run). The callback sets `key` at every
    `on_epoch_begin`, before Keras creates the epoch's iterator, after BackupAndRestore restored
    the count (`on_train_begin`), and nothing changes it while the epoch's batches are drawn."""

    def __init__(self):
        super().__init__()
        self.key = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="epoch_key")

    def on_epoch_begin(self, epoch, logs=None):
        self.key.assign(tf.cast(self.model.optimizer.iterations, tf.int64))


def _order_key(epoch_key):
    """A one-element dataset, the key of an iteration's orders: `epoch_key.key` (an EpochKey's)
    when the iteration (an epoch of `fit`) starts, or 0 without one (every iteration in the same
    order)."""
    if epoch_key is None:
        return tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
    key = epoch_key.key
    return tf.data.Dataset.range(1).map(lambda _: tf.convert_to_tensor(key))


def _array_batches(arrays, batch_size, shuffle, seed, epoch_key):
    """The tuple of arrays `arrays` (nests allowed) in batches, with each batch's positions as a
    last element; shuffled (`shuffle`) in an order of `seed` and `_order_key(epoch_key)`."""
    n = _length(arrays)
    arrays = tf.nest.map_structure(tf.convert_to_tensor, arrays)

    def order(key):
        index = _permutation(n, _order_seed(seed, key, 0)) if shuffle else \
            tf.range(n, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(index)

    order = _order_key(epoch_key).flat_map(order).apply(
        tf.data.experimental.assert_cardinality(n))
    batches = _batches_of(order, arrays, batch_size)
    return batches.map(lambda index, arrays: (*_gather(arrays, index), index))


def noisy_batches(x, y, batch_size=32, seed=0, shuffle=True, epoch_key=None):
    """Batches (x, y) of arrays in the order in which `L2RWModel(..., seed=seed).fit(x, y,
    batch_size=batch_size, shuffle=shuffle)` draws them, for a plain `model.fit` to train in the
    same order: give an `EpochKey`, and the same one to that fit's callbacks, so that each epoch's
    order is keyed on the plain optimizer's step count as the trainer's own is (so both must start
    from the same count, e.g. 0). Without one, every epoch has the order of a first epoch.

        key = l2rw_tf.fit.EpochKey()
        plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=...)
        plain.fit(noisy_batches(x, y, 100, seed=0, epoch_key=key), epochs=20, callbacks=[key])
    """
    return _array_batches((x, y), batch_size, shuffle, seed, epoch_key).map(
        lambda x, y, position: (x, y))


# The keys of a noisy dataset element in its dict form.
ELEMENT_KEYS = ("x", "y", "sample_weight", "example_id")


def _noisy_element(element, num_examples):
    """A noisy dataset element as (x, y, sample_weight, example id), the id -1 where the element
    carries none. Elements: (x, y), (x, y, sample_weight), (x, y, sample_weight, example_id) or a
    dict of ELEMENT_KEYS holding at least x and y."""
    example_id = None
    if isinstance(element, dict) and {"x", "y"} <= set(element) <= set(ELEMENT_KEYS):
        x, y = element["x"], element["y"]
        sample_weight, example_id = element.get("sample_weight"), element.get("example_id")
    elif isinstance(element, tuple) and len(element) == 4:
        x, y, sample_weight, example_id = element
    else:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(element)
    if y is None:
        raise ValueError("L2RWModel.fit needs labels: give (x, y) pairs")
    n = tf.shape(tf.nest.flatten(y)[0])[0]
    if sample_weight is None:
        sample_weight = tf.ones([n], tf.float32)
    if example_id is None:
        example_id = tf.fill([n], tf.constant(-1, tf.int64))
    else:
        if num_examples is None:
            raise ValueError("the dataset's elements carry example ids: give "
                             "L2RWModel(num_examples=...), ids are in [0, num_examples)")
        example_id = tf.reshape(tf.cast(example_id, tf.int64), [-1])
        checks = [tf.debugging.assert_non_negative(
                      example_id, message="example_id must be in [0, num_examples)"),
                  tf.debugging.assert_less(
                      example_id, tf.constant(num_examples, tf.int64),
                      message=f"example_id must be in [0, num_examples={num_examples})")]
        with tf.control_dependencies(checks):
            example_id = tf.identity(example_id)
    return x, y, tf.cast(sample_weight, tf.float32), example_id


def _is_positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _as_arrays(data):
    """x or y as `fit` or `clean_data` takes them, with Python lists made arrays: a list of
    arrays (a model's several inputs, as Keras' own fit takes them) becomes a tuple of them (tf.data
    would stack a list into one tensor), a list of numbers (or of lists) one array."""
    if isinstance(data, dict):
        return {key: _as_arrays(value) for key, value in data.items()}
    if isinstance(data, list):
        if data and all(hasattr(item, "shape") for item in data):
            return tuple(data)
        return np.asarray(data)
    return data


def _check_clean_data(clean_data):
    """Refuses a clean set that is neither a dataset nor a pair (x, y) (None: set later)."""
    if clean_data is None or isinstance(clean_data, tf.data.Dataset):
        return
    if not isinstance(clean_data, (tuple, list)) or len(clean_data) != 2:
        what = (f"a {type(clean_data).__name__} of {len(clean_data)}"
                if isinstance(clean_data, (tuple, list)) else type(clean_data).__name__)
        raise ValueError(f"clean_data must be (x, y) (arrays) or a tf.data.Dataset of unbatched "
                         f"(x, y) pairs, not {what}: the clean meta loss is unweighted, give no "
                         f"sample weights")


# Why a model of no trainable weights is refused.
_NOT_TRAINABLE = ("the model has no trainable weights (is it, or every layer, frozen?): L2RW "
                  "weighs examples by their loss gradients; unfreeze it (model.trainable = True)")


def _is_sparse_cross_entropy(loss):
    """True for a loss (as `compile` takes it) that takes class ids as labels."""
    loss = keras.losses.get(loss) if isinstance(loss, str) else loss
    return getattr(loss, "fn", loss) is keras.losses.sparse_categorical_crossentropy


def _check_label_encoding(y, name, loss):
    """Refuses one-hot rows under a sparse cross-entropy and class ids under a categorical one
    (Keras would say only that the ranks differ). `y`: the labels or their specs."""
    for labels in tf.nest.flatten(y):
        rank, width = len(labels.shape), labels.shape[-1] if len(labels.shape) else None
        if _is_sparse_cross_entropy(loss) and rank == 2 and (width or 0) > 1:
            raise ValueError(f"{name} looks one-hot (rows of {width}), but the loss is a sparse "
                             f"cross-entropy, which takes class ids: give y.argmax(-1), or "
                             f"compile with CategoricalCrossentropy")
        if getattr(loss, "fn", loss) is keras.losses.categorical_crossentropy and rank == 1:
            raise ValueError(f"{name} holds class ids, but the loss is a categorical "
                             f"cross-entropy, which takes one-hot rows: give "
                             f"keras.utils.to_categorical(y), or compile with "
                             f"SparseCategoricalCrossentropy")


def _check_labels(y, name, classes):
    """Refuses labels given as strings (TypeError) and, when `classes` is not None (a sparse
    cross-entropy on a model of that many outputs; 0: unknown), negative class ids or ids of
    `classes` or more (ValueError): TensorFlow would fail on them deep in the step, or give them
    a loss of NaN. `name` names them in the message ("y", "clean_data's y")."""
    for labels in tf.nest.flatten(y):
        labels = np.asarray(labels)
        if labels.dtype.kind in "USO" and labels.size and isinstance(labels.flat[0], (str, bytes)):
            raise TypeError(f"{name} holds strings ({labels.flat[0]!r}, ...): give integer class "
                            f"ids, e.g. from np.unique(labels, return_inverse=True)")
        if classes is None or not labels.size or labels.dtype.kind not in "iuf":
            continue
        if labels.min() < 0:
            raise ValueError(f"{name} holds negative labels (min {labels.min()}): class ids "
                             f"must be in [0, number of classes)")
        if classes and labels.max() >= classes:
            raise ValueError(f"{name} holds labels up to {labels.max()}, but the model has "
                             f"{classes} outputs: class ids must be in [0, {classes}) (a sparse "
                             f"cross-entropy takes one output per class)")


def _examples_of(spec):
    """The (x, y) specs of a dataset element as `_noisy_element` reads it, or None."""
    if isinstance(spec, dict) and {"x", "y"} <= set(spec):
        return spec["x"], spec["y"]
    if isinstance(spec, tuple) and len(spec) >= 2:
        return spec[0], spec[1]
    return None


def _input_ranks(model):
    """The ranks (batch dimension included) of `model`'s inputs, or None when unknown."""
    inputs = getattr(model, "inputs", None) if getattr(model, "built", False) else None
    return [len(t.shape) for t in tf.nest.flatten(inputs)] if inputs else None


def _structure(nest):
    return tf.nest.map_structure(lambda _: "array", nest)


def _check_same_examples(noisy, clean):
    """Refuses a clean set whose examples are not of the noisy batches' kind: given the (x, y)
    specs of batches of both, the same structure and per-example shapes (features, one-hot
    widths)."""
    for name, a, b in zip(("x", "y"), noisy, clean):
        try:
            tf.nest.assert_same_structure(a, b)
        except (ValueError, TypeError):
            raise ValueError(f"clean_data's {name} is {_structure(b)}, fit's {name} is "
                             f"{_structure(a)}: give both the same inputs") from None
        for sa, sb in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
            if not sa.shape[1:].is_compatible_with(sb.shape[1:]):
                raise ValueError(f"clean_data's {name} holds examples of shape "
                                 f"{tuple(sb.shape[1:])}, fit's {name} of shape "
                                 f"{tuple(sa.shape[1:])}: the clean set must hold examples of "
                                 f"the same kind (same features, same label encoding)")


def _refuse_batch_level_backups(callbacks):
    """BackupAndRestore saving within an epoch (`save_freq=N` batches) would not resume exactly:
    an epoch's order is keyed on the step count at its start (EpochKey), and Keras resumes such a
    backup in the middle of an epoch, from a count that keys another order."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    for callback in callbacks or []:
        if (isinstance(callback, keras.callbacks.BackupAndRestore)
                and callback.save_freq not in ("epoch", False)):
            raise ValueError(f"BackupAndRestore(save_freq={callback.save_freq!r}) is not "
                             f"supported by L2RWModel.fit: a backup within an epoch would not "
                             f"resume in the order of an uninterrupted fit; use "
                             f"save_freq='epoch' (the default), which resumes exactly")


# In-graph checks of a dataset's batches: the assertion's message, and the ValueError `fit`
# raises in place of TensorFlow's error when one fails.
DATASET_CHECKS = {
    "L2RWModel: label out of range": "the dataset's y holds labels outside [0, {classes}) (the "
                                     "model's outputs): class ids must be in [0, {classes})",
    "L2RWModel: negative sample weight": "the dataset's sample_weight holds negative values: "
                                         "L2RW needs sample weights >= 0 (0 leaves an example "
                                         "out of its step)",
}


def _checked_batch(x, y, sample_weight, example_id, classes):
    """A noisy dataset batch (as `_noisy_element` gives it), its sample weights checked
    non-negative and, when `classes` is known (a sparse cross-entropy), its labels checked in
    [0, classes): the assertions' messages are keys of DATASET_CHECKS."""
    checks = [tf.debugging.assert_non_negative(
        sample_weight, message="L2RWModel: negative sample weight")]
    if classes:
        labels = tf.cast(tf.nest.flatten(y)[0], tf.int64)
        checks += [tf.debugging.assert_non_negative(
                       labels, message="L2RWModel: label out of range"),
                   tf.debugging.assert_less(labels, tf.constant(classes, tf.int64),
                                            message="L2RWModel: label out of range")]
    with tf.control_dependencies(checks):
        return x, tf.nest.map_structure(tf.identity, y), tf.identity(sample_weight), example_id


class StopOnNonFinite(keras.callbacks.Callback):
    """Raises FloatingPointError, naming the step, after the batch in which the trainer's step
    found a NaN or infinite value (`L2RWModel.diverged_at`; that step kept the model and the
    optimizer as they were before it). `fit` adds it when `stop_on_nan`."""

    def on_train_begin(self, logs=None):
        self.model.diverged_at.assign(-1)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.diverged_at.numpy())
        if step >= 0:
            raise FloatingPointError(
                f"L2RWModel.fit: training diverged at step {step}: its loss, an example weight "
                f"or an updated weight was NaN or infinite; the model keeps its weights (and the "
                f"optimizer its state) from before that step. Lower the learning rate or check "
                f"the data (x, y, sample_weight, clean_data) for NaN or inf; "
                f"L2RWModel(..., stop_on_nan=False) trains on regardless")


def with_input_shape(model, x):
    """`x` with the shape of `model`'s one input where the pipeline lost it: a `tf.py_function`
    in a tf.data map leaves a tensor of unknown rank, which Keras layers refuse. Anything else
    as it is (the model's own call checks it)."""
    inputs = getattr(model, "inputs", None)
    if (isinstance(x, tf.Tensor) and x.shape.rank is None and inputs is not None
            and len(inputs) == 1):
        return tf.ensure_shape(x, inputs[0].shape)
    return x


def default_clean_batch_size(clean_size, noisy_batch_size=None):
    """Clean examples per step unless given: the noisy batch size (32 if fit is not told), but
    at least 100, as in every step of the paper's experiments, and at most the clean set. Why at
    least 100: on examples/digits_tokens.py a clean batch of 32 (of 100) left L2RW at chance on
    every seed and the whole 100 trained it (examples/README.md). A likely reason: at the start
    every output is near uniform and the last layer's bias dominates an example's gradient, so
    against a few dozen clean examples its alignment mostly says whether its label is frequent
    among them."""
    return min(int(clean_size), max(int(noisy_batch_size or 32), 100))


@keras.saving.register_keras_serializable(package="l2rw_tf")
class L2RWModel(keras.Model):
    """A Keras model that trains `model` by Learning to Reweight Examples (Ren et al. 2018).

    model: any Keras model whose output the compiled loss takes (logits or probabilities,
        as the loss says); unbuilt (a Sequential without an Input), `fit` builds it on the
        shape of its input, as Keras' own fit does.
        clean_data: the small trusted set, a `tf.data.Dataset` of unbatched
        (x, y) pairs (read into memory once per `fit`) or a tuple of arrays (x, y).
        clean_batch_size: clean examples per step (default `default_clean_batch_size`: the
        noisy batch size but at least 100, as the paper's steps; the whole clean set if smaller).
    meta_grad: "auto" (the fastest exact method for the model), "layerwise", "jvp" or "lookahead".
    algorithm: "calibrated" (default), "select" or "paper" (`ALGORITHMS`). "paper" is Algorithm 1
        as the paper and the original code run it: dropout active in the meta passes, and each
        example of positive alignment weighted in proportion to it. "select" makes two changes,
        measured in results/stability/README.md: the meta passes run without dropout (every
        Dropout / SpatialDropout / AlphaDropout / GaussianDropout / GaussianNoise layer silent,
        BatchNorm still on batch statistics; the weighted step keeps the model's dropout), and
        every example of positive alignment gets the same weight, so the clean set selects the
        examples the step takes and plain training's mean gradient over them is the step. On a
        BatchNorm + dropout CNN under 40% uniform noise, "paper" ended 40-56 points below plain
        training on a validation split, "select" within 0.4 points of it. But on clean labels
        "select" still drops the hard correct examples (a fifth of the batch) and ends about a
        point below plain training. "calibrated" drops only as many examples as the batch
        disagrees with the clean set more often than correct examples do (calibrated.py): on
        clean labels almost none (results/clean_labels/README.md). It costs two more meta passes
        per step than "select".
    include_regularization: the model's regularisation losses (weight decay) in the clean meta
        loss, as the original CIFAR code.
    num_examples: the number of training examples, to keep per-example statistics of a fit on a
        dataset whose elements carry example ids (below); optional for arrays (then it must be
        their length). Given, the statistics exist from construction on, so that a checkpoint
        of the wrapper loads into a fresh one.
    weight_on: {name: boolean array over the training examples (by position in the arrays given
        to `fit`, or by example id)}: the weight mass on each group becomes a metric
        `weight_on_<name>`, e.g. the examples known to be noisy, or a minority class.
    seed: the order of the noisy arrays and of the clean set.
    stop_on_nan: True (default): a step whose per-example losses, loss, example weights or
        updated model weights hold a NaN or an infinity is undone (the model's and the
        optimizer's variables get back their values from before it, at the cost of one copy of
        them per step) and `fit` raises FloatingPointError naming the step, as the command line
        stops; False: training goes on regardless (Keras' own behaviour).

    Needs the TensorFlow or JAX backend of Keras (JAX: jax_step.py). Recurrent layers train with
    `lookahead` (`auto` picks it; `jvp` is refused: `has_recurrent_layer`).

    Sample weights (`fit(..., sample_weight=...)`, or the third element of a dataset) multiply
    each noisy example's loss before reweighting: the L2RW weights are those of the losses
    s_i·C_i, so an example of sample weight 0 gets weight 0, and scaling every s_i alike changes
    nothing (the normalisation removes it).

    Datasets: `fit` takes a dataset of batches, each element (x, y), (x, y, sample_weight),
    (x, y, sample_weight, example_id) or a dict {"x": ..., "y": ...[, "sample_weight": ...]
    [, "example_id": ...]}. Example ids (int, one per example, in [0, num_examples); give
    `num_examples`) key the per-example statistics (`example_weights()`, `label_issues`) and the
    `weight_on` groups, as positions do for arrays; without ids a dataset keeps none.

    Order and resuming: the noisy arrays are shuffled and the clean set drawn in an order that is
    a function of `seed` and of the optimizer's step count when an epoch starts (`EpochKey`, a
    callback `fit` adds), not of how many epochs this process has run. So
    `keras.callbacks.BackupAndRestore` (which restores the weights, the optimizer with its step
    count, the epoch and `example_stats`, a weight of the wrapper; the wrapper also saves the
    model's seed-generator states, which Keras leaves out, so dropout draws the same masks)
    resumes an interrupted `fit` in the order of an uninterrupted one, and ends with its weights
    (as far as the kernels are reproducible: two uninterrupted fits of a convolutional model can
    differ in the last bits on oneDNN, whose multithreaded convolution gradients are not
    bit-exact, and L2RW's zero weights amplify that); a second `fit` continues with new orders.
    `noisy_batches` gives a plain `model.fit` the batches in the trainer's order (with an
    `EpochKey` of its own). (A noisy *dataset* keeps its own order: for an exact resume it must
    not depend on the process' history, e.g. no `reshuffle_each_iteration`; and
    `steps_per_epoch` carries one iteration over epochs, which a backup does not record.)
    A backup within an epoch (`BackupAndRestore(save_freq=N)`) would resume from a step count
    that keys another order: it is refused; the default `save_freq="epoch"` resumes exactly.

    Callbacks (tested: TensorBoard, which logs the weight metrics of the module docstring beside
    the compiled ones; EarlyStopping; ModelCheckpoint; BackupAndRestore). Saving:
    `trainer.save("x.keras")` (and `ModelCheckpoint` without `save_weights_only`) saves the
    wrapped model, the optimizer, the compile arguments, the settings and the statistics, but
    not the clean set: `keras.models.load_model` (after `import l2rw_tf.fit` or any use of
    `l2rw_tf.L2RWModel`, which registers the class) gives back an L2RWModel that evaluates,
    predicts and ranks at once, and trains on once given `trainer.clean_data = (x, y)`. Weights
    only (`save_weights_only=True`, `*.weights.h5`) load into a wrapper of the same model. To
    use the trained network without l2rw_tf, save `trainer.model`.
    """

    def __init__(self, model, clean_data, clean_batch_size=None, meta_grad="auto",
                 include_regularization=True, weight_on=None, seed=0, num_examples=None,
                 algorithm="calibrated", stop_on_nan=True, **kwargs):
        if keras.backend.backend() not in ("tensorflow", "jax"):
            raise ValueError(f"L2RWModel needs the TensorFlow or JAX backend of Keras, not "
                             f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow")
        super().__init__(**kwargs)
        if keras.backend.backend() == "jax":  # Keras' stateless JAX steps (jax_step.py)
            from l2rw_tf import jax_step
            jax_step.install(self)
        _check_clean_data(clean_data)
        if clean_batch_size is not None and not _is_positive_int(clean_batch_size):
            raise ValueError(f"clean_batch_size={clean_batch_size!r} must be a positive integer "
                             f"(or None: default_clean_batch_size)")
        if getattr(model, "built", False) and not model.trainable_weights:
            raise ValueError(_NOT_TRAINABLE)
        if meta_grad not in ("auto",) + reweight.META_GRADIENTS:
            raise ValueError(f"meta_grad={meta_grad!r}: choose auto or one of "
                             f"{', '.join(reweight.META_GRADIENTS)}")
        if num_examples is not None and int(num_examples) < 1:
            raise ValueError(f"num_examples={num_examples} must be at least 1")
        self.model = model
        self.clean_data = clean_data
        self.clean_batch_size = clean_batch_size
        self.requested_meta_grad = meta_grad
        self.include_regularization = include_regularization
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        self.seed = seed
        self.num_examples = None if num_examples is None else int(num_examples)
        self.weight_on = {name: np.asarray(mask, bool) for name, mask in (weight_on or {}).items()}
        self.stop_on_nan = bool(stop_on_nan)
        # The step (1-based) at which this fit diverged, -1 while none did (stop_on_nan): not a
        # weight, so checkpoints are as without it.
        self.diverged_at = tf.Variable(tf.constant(-1, tf.int64), trainable=False,
                                       name="diverged_at",
                                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.per_example_loss = None
        self._sparse_labels = False
        self._label_loss = None
        self.zero_weight_fraction = keras.metrics.Mean(name="zero_weight_fraction")
        self.effective_sample_size = keras.metrics.Mean(name="effective_sample_size")
        self.group_weights = {name: keras.metrics.Mean(name=f"weight_on_{name}")
                              for name in self.weight_on}
        self.example_stats = None  # [examples, 3]: times seen, Σ w·n, times at zero
        if self.num_examples is not None:
            self._track_examples(self.num_examples)
        self._mark_built()

    def _mark_built(self):
        """The wrapper is built when its model is (it has no variables of its own to create but
        `example_stats`): saving (ModelCheckpoint, BackupAndRestore) refuses unbuilt models, and
        Keras builds a subclassed model only when it is called (evaluate, predict)."""
        if getattr(self.model, "built", False):
            self.built = True

    @property
    def meta_grad(self):
        """The meta-gradient method the step uses (chosen on first use when "auto")."""
        if self.requested_meta_grad == "auto":
            return choose_meta_grad(self.model, self.distribute_strategy.num_replicas_in_sync)
        return self.requested_meta_grad

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """As `keras.Model.compile`; `loss` is taken per example for the L2RW step."""
        outputs = getattr(self.model, "outputs", None) if self.model.built else None
        if outputs and len(outputs) > 1:
            raise ValueError(f"the model has {len(outputs)} outputs, but L2RWModel trains one "
                             f"output with one loss: give a model of one output (e.g. "
                             f"concatenate the outputs and write one loss on them)")
        self.per_example_loss = per_example(loss)
        self._sparse_labels = _is_sparse_cross_entropy(loss)
        self._label_loss = keras.losses.get(loss) if isinstance(loss, str) else loss
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    # Saving: the settings and the wrapped model; the clean set is not saved (see the docstring).

    def get_config(self):
        config = super().get_config()
        config.update(
            model=keras.saving.serialize_keras_object(self.model),
            clean_batch_size=self.clean_batch_size, meta_grad=self.requested_meta_grad,
            include_regularization=self.include_regularization, seed=self.seed,
            algorithm=self.algorithm,
            num_examples=self.num_examples, stop_on_nan=self.stop_on_nan,
            weight_on={name: {"size": len(mask), "true": np.flatnonzero(mask).tolist()}
                       for name, mask in self.weight_on.items()})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        weight_on = {}
        for name, group in (config.pop("weight_on", None) or {}).items():
            weight_on[name] = np.zeros(group["size"], bool)
            weight_on[name][group["true"]] = True
        return cls(model, clean_data=None, weight_on=weight_on, **config)

    def compile_from_config(self, config):
        """Keras' loading compiles only models that do not override `compile`: this one does, so
        it compiles here, and builds the optimizer so that its saved state loads."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.model.built:
            self.optimizer.build(self.trainable_variables)

    def _seed_states(self):
        """The states of the wrapped model's random seed generators (dropout and the like):
        variables of the model that Keras does not save with its weights."""
        layers = self.model._flatten_layers(include_self=True, recursive=True)
        return [generator.state for layer in layers
                for generator in getattr(layer, "_seed_generators", [])]

    def save_own_variables(self, store):
        """`example_stats` (Keras' "0", when there are statistics) and the model's seed states
        ("seed_state_<i>"), so that a checkpoint or a BackupAndRestore backup resumes the
        dropout masks of an uninterrupted fit too."""
        super().save_own_variables(store)
        for i, state in enumerate(self._seed_states()):
            store[f"seed_state_{i}"] = state

    def load_own_variables(self, store):
        """The wrapper's own variable is `example_stats`, created by `fit` (or `num_examples`):
        loading a checkpoint into a wrapper without it (or of another size) creates it. The
        model's seed states are restored where the checkpoint holds them."""
        seeds = {key for key in store.keys() if key.startswith("seed_state_")}
        own = {key: store[key] for key in store.keys() if key not in seeds}
        if len(own) == 1:
            rows = own["0"].shape[0]
            if self.example_stats is None or self.example_stats.shape[0] != rows:
                self._track_examples(rows)
        super().load_own_variables(own)
        for i, state in enumerate(self._seed_states()):
            if f"seed_state_{i}" in seeds:
                state.assign(np.asarray(store[f"seed_state_{i}"]))

    # The data fit iterates: the noisy batches zipped with endless clean batches.

    def _clean_arrays(self):
        """The clean set as tensors (x, y)."""
        data = self.clean_data
        if data is None:
            raise ValueError("this L2RWModel has no clean set (a loaded model: the clean set is "
                             "not saved with it): set trainer.clean_data = (x, y) before fit")
        _check_clean_data(data)
        if isinstance(data, tf.data.Dataset):
            self._refuse_batched_clean_set(data)
            ds = data.map(lambda x, y, *sample_weight: (x, y))  # the clean loss is unweighted
            size = int(ds.cardinality())
            if size <= 0:
                raise ValueError("clean_data is empty or of unknown size; give a finite dataset "
                                 "of (x, y) pairs or arrays (x, y)")
            arrays = ds.batch(size).get_single_element()
            _check_labels(arrays[1], "clean_data's y", self._label_classes())
            return arrays, size
        x, y = map(_as_arrays, data)
        _check_labels(y, "clean_data's y", self._label_classes())
        arrays = tf.nest.map_structure(tf.convert_to_tensor, (x, y))
        size = _length(arrays, "clean_data's x and y")
        if size <= 0:
            raise ValueError("clean_data is empty; give arrays (x, y) of the clean set")
        return arrays, size

    def _refuse_batched_clean_set(self, data):
        """clean_data's dataset holds single examples, which `fit` batches itself: one whose
        elements have the model's input rank (a batch dimension) is refused."""
        ranks, examples = _input_ranks(self.model), _examples_of(data.element_spec)
        if ranks and examples and [len(s.shape) for s in tf.nest.flatten(examples[0])] == ranks:
            raise ValueError("clean_data is a dataset of batches: give it unbatched, "
                             "clean_data.unbatch() (fit draws clean batches of "
                             "clean_batch_size from it)")

    def _label_classes(self):
        """The number of classes labels must lie below: under a sparse cross-entropy, the model's
        output width (0 when unknown); None under other losses (labels unchecked)."""
        if not self._sparse_labels:
            return None
        outputs = getattr(self.model, "outputs", None) if self.model.built else None
        width = outputs[0].shape[-1] if outputs and len(outputs) == 1 else None
        return width if width and width > 1 else 0

    def clean_dataset(self, noisy_batch_size, epoch_key=None):
        """The clean set in endless batches of `clean_batch_size`, in a new order every pass (a
        function of `seed`, of the key of `_order_key(epoch_key)` and of the pass)."""
        arrays, size = self._clean_arrays()
        batch = (self.clean_batch_size if self.clean_batch_size is not None  # 0 is refused
                 else default_clean_batch_size(size, noisy_batch_size))
        if not 0 < batch <= size:
            raise ValueError(f"clean_batch_size={batch} must be in [1, {size}] (the clean set)")
        if batch < 2 and ALGORITHMS[self.algorithm]["weighting"] == "calibrated":
            raise ValueError(f"clean_batch_size={batch}: algorithm={self.algorithm!r} splits every "
                             f"clean batch in two halves; give at least 2 clean examples per "
                             f"step, or algorithm='select'")
        self._clean_batch = batch

        def endless(key):
            base = _order_seed(self.seed + 1, key, 0)
            return tf.data.Dataset.counter().flat_map(
                lambda p: tf.data.Dataset.from_tensor_slices(_permutation(
                    size, tf.random.experimental.stateless_fold_in(base, p))))

        order = _order_key(epoch_key).flat_map(endless).apply(
            tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
        batches = _batches_of(order, arrays, batch, drop_remainder=True)
        return batches.map(lambda index, arrays: _gather(arrays, index))

    def _array_dataset(self, x, y, sample_weight, batch_size, shuffle, epoch_key):
        """Arrays (or nests of arrays) as batches (x, y, sample_weight, position), shuffled in an
        order of `seed` and `_order_key(epoch_key)`; `position` keys the per-example weight
        statistics."""
        n = _length((x, y))
        if n == 0:
            raise ValueError("x and y hold no examples: give fit at least one")
        if sample_weight is None:
            sample_weight = np.ones(n, np.float32)
        sample_weight = np.asarray(sample_weight, np.float32)
        if len(sample_weight) != n:
            raise ValueError(f"sample_weight has {len(sample_weight)} entries for {n} examples")
        if np.any(sample_weight < 0):
            raise ValueError(f"sample_weight holds negative values (min {sample_weight.min()}): "
                             f"L2RW needs sample weights >= 0 (0 leaves an example out of its "
                             f"step)")
        return _array_batches((x, y, sample_weight), batch_size, shuffle, self.seed,
                              epoch_key), n

    def fit(self, x=None, y=None, batch_size=None, epochs=1, sample_weight=None,
            shuffle=True, class_weight=None, validation_split=0.0, **kwargs):
        """As `keras.Model.fit`, on arrays (x, y) or a dataset of batches (x, y[, sample_weight
        [, example_id]]) or dicts (see the class docstring); the clean batches are zipped in
        (see the module docstring). Per-example weight statistics are kept for array inputs and
        for datasets that carry example ids (`example_weights`)."""
        if self.per_example_loss is None:
            raise ValueError("compile the L2RWModel (with a loss) before fit")
        if class_weight is not None:
            raise ValueError("class_weight is not supported: give per-example sample_weight")
        if batch_size is not None and not _is_positive_int(batch_size):
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer (or None: 32)")
        _refuse_batch_level_backups(kwargs.get("callbacks"))
        if isinstance(x, tf.data.Dataset):
            self._check_dataset(x, batch_size)
        else:
            x, y = _as_arrays(x), _as_arrays(y)
        self._build_model(x)
        if not isinstance(x, tf.data.Dataset):  # labels checked once the outputs are known
            _check_labels(y, "y", self._label_classes())
        if self.requested_meta_grad == "layerwise":
            try:
                reweight.layerwise_layers(self.model)
            except ValueError as e:
                raise ValueError(f"meta_grad='layerwise' does not apply to this model: {e}; use "
                                 f"meta_grad='auto' or 'jvp'") from None
        if (self.meta_grad == "jvp" and self.distribute_strategy.num_replicas_in_sync > 1
                and any(getattr(layer, "synchronized", False)
                        for layer in self.model._flatten_layers())):  # noqa: SLF001
            raise ValueError("meta_grad='jvp' does not differentiate through synchronized "
                             "BatchNorm's all-reduce (forward mode): use 'lookahead' or 'auto'")
        if self.meta_grad == "jvp" and has_recurrent_layer(self.model):
            raise ValueError("meta_grad='jvp' does not run through a recurrent layer's loop in "
                             "a traced step (TensorFlow's forward mode fails on its "
                             "TensorArrays): use meta_grad='lookahead' or 'auto'")
        self._mark_built()
        # Keys every epoch's orders on the step count at its start (see EpochKey: why not the
        # optimizer's count itself).
        epoch_key = EpochKey()
        if isinstance(x, tf.data.Dataset):
            if y is not None or sample_weight is not None or validation_split:
                raise ValueError("with a dataset, y, sample_weight and validation_split come "
                                 "from the dataset (x, y[, sample_weight[, example_id]])")
            if self.weight_on and self.num_examples is None:
                raise ValueError("weight_on with a dataset needs example ids in its elements and "
                                 "L2RWModel(num_examples=...)")
            if self.num_examples is not None:
                self._track_examples(self.num_examples)
            num_examples = self.num_examples
            noisy = x.map(lambda *element: _noisy_element(
                element if len(element) > 1 else element[0], num_examples))  # map unpacks tuples
            classes = self._label_classes()
            noisy = noisy.map(lambda *batch: _checked_batch(*batch, classes))
            noisy_batch = batch_size
        else:
            if validation_split:
                raise ValueError("validation_split is not supported; pass validation_data")
            noisy_batch = batch_size or 32
            noisy, n = self._array_dataset(x, y, sample_weight, noisy_batch, shuffle,
                                           epoch_key)
            if self.num_examples is not None and n != self.num_examples:
                raise ValueError(f"num_examples={self.num_examples}, but the arrays given to fit "
                                 f"hold {n} examples")
            self._track_examples(n)
        clean = self.clean_dataset(noisy_batch, epoch_key)
        _check_same_examples(noisy.element_spec[:2], clean.element_spec)
        _check_label_encoding(noisy.element_spec[1], "y", self._label_loss)
        data = tf.data.Dataset.zip((noisy, clean))
        if int(noisy.cardinality()) >= 0:
            data = data.apply(tf.data.experimental.assert_cardinality(noisy.cardinality()))
        callbacks = kwargs.pop("callbacks", None)
        own = [epoch_key] + ([StopOnNonFinite()] if self.stop_on_nan else [])
        if isinstance(callbacks, keras.callbacks.CallbackList):  # Keras uses it as it is
            callbacks.callbacks.extend(own)
            for callback in own:
                callback.set_model(self)
        else:
            callbacks = [*(callbacks or []), *own]
        try:
            return super().fit(data.prefetch(tf.data.AUTOTUNE), epochs=epochs, shuffle=False,
                               callbacks=callbacks, **kwargs)
        except tf.errors.InvalidArgumentError as e:  # a failed check of a dataset's batch
            failed = [key for key in DATASET_CHECKS if key in e.message]
            if not failed:
                raise
            raise ValueError(DATASET_CHECKS[failed[0]].format(
                classes=self._label_classes())) from None

    def _check_dataset(self, x, batch_size):
        """Refuses what `fit` cannot take from a dataset: `batch_size` (its elements are the
        batches), single examples (no batch dimension) and string labels."""
        if batch_size is not None:
            raise ValueError(f"batch_size={batch_size} applies to arrays, but x is a dataset, "
                             f"whose elements are the batches: batch the dataset "
                             f"(dataset.batch(n)) and leave batch_size out")
        examples = _examples_of(x.element_spec)
        if examples is None:
            return  # _noisy_element says what is missing
        features, labels = (tf.nest.flatten(part) for part in examples)
        ranks = _input_ranks(self.model)
        if any(s.shape.rank == 0 for s in labels) or (
                ranks and [s.shape.rank for s in features] == [r - 1 for r in ranks]):
            raise ValueError("x is a dataset of single examples (no batch dimension): batch it, "
                             "e.g. dataset.batch(32) (L2RW weighs the examples of a batch "
                             "against each other)")
        if any(s.dtype == tf.string for s in labels):
            raise TypeError("the dataset's y holds strings: give integer class ids, e.g. "
                            "through a tf.keras.layers.StringLookup in dataset.map")

    def _build_model(self, x):
        """Builds an unbuilt model (a Sequential without an Input) on x's shape, as Keras' own
        fit builds it on its first batch; a model of no trainable weights is refused."""
        if not getattr(self.model, "built", False):
            if isinstance(x, tf.data.Dataset):
                sample = tf.nest.map_structure(
                    lambda s: tf.zeros([1] + [d or 1 for d in s.shape[1:]], s.dtype),
                    _examples_of(x.element_spec)[0])
            else:
                sample = tf.nest.map_structure(lambda a: tf.convert_to_tensor(a[:1]), x)
            self.model(sample)
            self._mark_built()
        if not self.model.trainable_weights:
            raise ValueError(_NOT_TRAINABLE)

    def _track_examples(self, num_examples):
        for name, mask in self.weight_on.items():
            if len(mask) != num_examples:
                raise ValueError(f"weight_on[{name!r}] has {len(mask)} entries for "
                                 f"{num_examples} training examples")
        if self.example_stats is None or self.example_stats.shape[0] != num_examples:
            if self.example_stats is not None:  # a fit on another number of examples
                self._untrack_variable(self.example_stats)
                self.train_function = None  # traced on the old variable: trace again
            # A weight of the wrapper: saved with it, so BackupAndRestore resumes the statistics.
            self.example_stats = self.add_weight(shape=(num_examples, 3), initializer="zeros",
                                                 trainable=False, name="example_stats")
            self._group_masks = {name: tf.constant(mask) for name, mask in self.weight_on.items()}

    def train_step(self, data):
        # Unpack: the noisy batch that fit was given, and the clean batch zipped beside it.
        (x, y, sample_weight, position), (clean_x, clean_y) = data
        replicas = distribute.num_replicas()
        if replicas > 1 and self._clean_batch % replicas:
            raise ValueError(f"the clean batch of {self._clean_batch} does not split evenly over "
                             f"{replicas} replicas: give a clean_batch_size divisible by them")
        if (replicas > 1 and self._clean_batch < 2 * replicas
                and ALGORITHMS[self.algorithm]["weighting"] == "calibrated"):
            raise ValueError(f"the clean batch of {self._clean_batch} leaves fewer than 2 examples "
                             f"per replica for algorithm={self.algorithm!r}'s two halves: give a "
                             f"clean_batch_size of at least {2 * replicas}")
        x, clean_x = (with_input_shape(self.model, t) for t in (x, clean_x))
        # The step of step.py, the command line's, on the compiled loss per example.
        config = StepConfig(method="l2rw", meta_grad=self.meta_grad,
                            clean_weight_decay=self.include_regularization,
                            **ALGORITHMS[self.algorithm])
        # stop_on_nan: the state before the step (read before anything changes it), kept if
        # the step is not finite.
        before = self._state_values() if self.stop_on_nan else None
        # Loss scaling as Keras' own train_step (`optimizer.scale_loss`): under mixed_float16,
        # `compile` wraps the optimizer in a LossScaleOptimizer, which unscales the gradients.
        result = step_gradients(self.model, config, (x, y, sample_weight), (clean_x, clean_y),
                                loss_fn=self.per_example_loss,
                                loss_scale=precision.loss_scale(self.optimizer))
        # Update the parameters, then every metric: the compiled ones on the noisy outputs.
        self.optimizer.apply(result.gradients, self.model.trainable_variables)
        finite = self._keep_state_unless_finite(before, result) if self.stop_on_nan else None

        # The global batch's weights, positions and loss, on every replica (one device: as they
        # are). One all-gather of both, in float64 (exact for both): TensorFlow's CPU collectives
        # abort on a float and an int64 gather in one step.
        gathered = distribute.replica_gather(tf.stack(
            [tf.cast(result.example_weights, tf.float64), tf.cast(position, tf.float64)], axis=1))
        weights = tf.cast(gathered[:, 0], result.example_weights.dtype)
        positions = tf.cast(gathered[:, 1], position.dtype)
        loss = distribute.replica_sum(result.loss)

        def update_step_statistics():
            self._update_weight_metrics(weights, positions)
            self._loss_tracker.update_state(loss)

        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # It skipped the step if a scaled gradient overflowed (and halved its scale): that
            # step's weights and loss may be NaN and are kept out of the statistics.
            kept = self.optimizer.check_finite(result.gradients)
            tf.cond(kept if finite is None else tf.logical_and(kept, finite),
                    update_step_statistics, lambda: None)
        elif finite is not None:  # a diverged step is kept out of them too
            tf.cond(finite, update_step_statistics, lambda: None)
        else:
            update_step_statistics()
        return self.compute_metrics(x, y, result.outputs)

    def _state_variables(self):
        """What a step changes and a diverged step must leave as it was: the model's variables
        (parameters, BatchNorm statistics, seed states) and the optimizer's (step count, slots,
        loss scale); the step count first. The optimizer is built first (as its first `apply`
        would), so that the list is the same before and after the step."""
        if not self.optimizer.built:
            self.optimizer.build(self.model.trainable_variables)
        count = self.optimizer.iterations
        return [count, *self.model.variables,
                *(v for v in self.optimizer.variables if v is not count)]

    def _state_values(self):
        return [tf.identity(v.value) for v in self._state_variables()]

    def _keep_state_unless_finite(self, before, result):
        """Whether the step just applied is finite: its per-example losses, its loss and example
        weights (left to a LossScaleOptimizer, which skips the steps they overflow) and every
        updated model variable, on every replica; and no earlier step of this fit diverged. If
        not, every model and optimizer variable gets back its value from `before` (one copy of
        the state per step: the price of keeping the last good weights), and `diverged_at` the
        step's number, 1-based (the first such step's)."""
        checked = [result.losses] + [v.value for v in self.model.variables
                                     if tf.as_dtype(v.dtype).is_floating]
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            checked += [result.loss, result.example_weights]
        bad = tf.cast(tf.logical_not(tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(t)) for t in checked])), tf.float32)
        finite = tf.logical_and(tf.equal(distribute.replica_sum(bad), 0.0),
                                self.diverged_at < 0)
        step = tf.cast(before[0], tf.int64) + 1
        variables = self._state_variables()

        def restore(strategy, finite, before, step):
            # In the cross-replica context, where a mirrored variable takes one value: every
            # replica's is the same (the flag is all-reduced, the state mirrored).
            first = lambda value: strategy.experimental_local_results(value)[0]  # noqa: E731
            finite = first(finite)
            for variable, value in zip(variables, before):
                variable.assign(tf.where(finite, variable.value, first(value)))
            self.diverged_at.assign(tf.where(finite | (self.diverged_at >= 0), self.diverged_at,
                                             first(step)))

        tf.distribute.get_replica_context().merge_call(restore, args=(finite, before, step))
        return finite

    def _symbolic_build(self, iterator=None, data_batch=None):
        """Keras builds the compiled loss and metrics on a first element before a `fit` under a
        strategy, reading it as (x, y, sample_weight): ours zips the clean batch beside the noisy
        one (x, y, sample_weight, position), so it is given the noisy part."""
        if (isinstance(data_batch, tuple) and len(data_batch) == 2
                and isinstance(data_batch[0], tuple) and len(data_batch[0]) == 4):
            data_batch = data_batch[0][:3]
        super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, data):
        """The wrapped model's evaluation: the compiled loss and metrics, without L2RW's."""
        logs = super().test_step(data)
        return {k: v for k, v in logs.items() if k not in self._weight_metric_names()}

    def _weight_metric_names(self):
        return {"zero_weight_fraction", "effective_sample_size"} | {
            m.name for m in self.group_weights.values()}

    def _update_weight_metrics(self, weights, position):
        weights = tf.cast(weights, tf.float32)
        n = tf.cast(tf.size(weights), tf.float32)
        is_zero = tf.cast(tf.equal(weights, 0.0), tf.float32)
        self.zero_weight_fraction.update_state(tf.reduce_mean(is_zero))
        squares = tf.reduce_sum(tf.square(weights))
        self.effective_sample_size.update_state(
            tf.where(squares > 0, 1.0 / tf.maximum(squares, 1e-30), 0.0))
        known = position >= 0
        if self.example_stats is not None:
            index = tf.boolean_mask(position, known)[:, None]
            updates = tf.stack([tf.ones_like(weights), weights * n, is_zero], axis=1)
            self.example_stats.assign(tf.tensor_scatter_nd_add(  # float64 under floatx float64
                self.example_stats.value, index,
                tf.cast(tf.boolean_mask(updates, known), self.example_stats.dtype)))
            for name, mask in self._group_masks.items():
                in_group = tf.cast(tf.gather(mask, tf.maximum(position, 0)), tf.float32)
                self.group_weights[name].update_state(
                    tf.reduce_sum(weights * in_group * tf.cast(known, tf.float32)))

    def example_weights(self):
        """Per training example (by position in the arrays given to `fit`, or by example id):
        times seen, mean weight relative to uniform (1.0 = 1/n) and the fraction of steps at
        weight zero."""
        if self.example_stats is None:
            raise ValueError("no per-example statistics: fit on arrays (x, y), or on a dataset "
                             "whose elements carry example ids (with num_examples), keeps them")
        seen, weight_sum, zeros = np.asarray(self.example_stats.numpy(), np.float64).T
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"times_seen": seen.astype(np.int64), "mean_weight": weight_sum / seen,
                    "zero_fraction": zeros / seen}

    def label_issues(self, x, y, batch_size=256, from_logits=None, example_ids=None, seed=0,
                     order=None):
        """The training examples (the arrays `x`, `y` this model was fitted on), ranked
        likeliest mislabelled first: `l2rw_tf.label_issues(self, x, y, ...)`, see ranking.py."""
        from l2rw_tf.ranking import label_issues
        return label_issues(self, x, y, batch_size=batch_size, from_logits=from_logits,
                            example_ids=example_ids, seed=seed, order=order)
