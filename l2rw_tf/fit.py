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
datasets, as keras-io's SimCLR example feeds two streams, so a `tf.distribute` strategy splits
both.

What the progress bar, `History` and the TensorBoard callback show besides the compiled metrics:
`zero_weight_fraction` (examples L2RW gave weight 0), `effective_sample_size` (1/Σw², the number
of equally weighted examples the weights are worth; 0 when all are zero) and, for every group
named in `weight_on`, `weight_on_<name>`, the weight mass on that group's examples.
"""
import keras
import numpy as np
import tensorflow as tf

from l2rw_tf import reweight
from l2rw_tf.step import StepConfig, step_gradients


def choose_meta_grad(model):
    """The fastest exact meta-gradient for `model`: `layerwise` where it applies (a chain of
    Dense / Conv2D layers without BatchNorm or dropout), else `jvp` (results/bench)."""
    try:
        reweight.layerwise_layers(model)
    except (ValueError, AttributeError):
        return "jvp"
    return "layerwise"


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
        values = tf.convert_to_tensor(values_of(y_true, y_pred))
        if values.shape.rank == 0:
            raise ValueError("the loss returns a scalar; L2RW needs one value per example "
                             "(a keras.losses.Loss, or a function without reduction)")
        if values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    return per_example_loss


def _as_dataset(x, y, sample_weight, batch_size, shuffle, seed):
    """Arrays (or nests of arrays) as a dataset of batches (x, y, sample_weight, position):
    `position` keys the per-example weight statistics."""
    n = len(tf.nest.flatten(x)[0])
    if sample_weight is None:
        sample_weight = np.ones(n, np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.asarray(sample_weight, np.float32),
                                             np.arange(n, dtype=np.int64)))
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size or 32), n


def _with_defaults(element):
    """A noisy element (x, y[, sample_weight]) as (x, y, sample_weight, position = -1)."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(element)
    if y is None:
        raise ValueError("L2RWModel.fit needs labels: give (x, y) pairs")
    n = tf.shape(tf.nest.flatten(y)[0])[0]
    if sample_weight is None:
        sample_weight = tf.ones([n], tf.float32)
    return x, y, tf.cast(sample_weight, tf.float32), tf.fill([n], tf.constant(-1, tf.int64))


class L2RWModel(keras.Model):
    """A Keras model that trains `model` by Learning to Reweight Examples (Ren et al. 2018).

    model: any built Keras model whose output the compiled loss takes (logits or probabilities,
        as the loss says). clean_data: the small trusted set, a `tf.data.Dataset` of unbatched
        (x, y) pairs or a tuple of arrays (x, y). clean_batch_size: clean examples per step
        (default: the noisy batch size, or the whole clean set if smaller, as the original).
    meta_grad: "auto" (the fastest exact method for the model), "layerwise", "jvp" or "lookahead".
    include_regularization: the model's regularisation losses (weight decay) in the clean meta
        loss, as the original CIFAR code.
    weight_on: {name: boolean array over the training examples (by position in the arrays given
        to `fit`)}: the weight mass on each group becomes a metric `weight_on_<name>`, e.g. the
        examples known to be noisy, or a minority class.
    seed: the clean set's shuffling and the noisy arrays' shuffling.

    Sample weights (`fit(..., sample_weight=...)`, or the third element of a dataset) multiply
    each noisy example's loss before reweighting: the L2RW weights are those of the losses
    s_i·C_i, so an example of sample weight 0 gets weight 0, and scaling every s_i alike changes
    nothing (the normalisation removes it).
    """

    def __init__(self, model, clean_data, clean_batch_size=None, meta_grad="auto",
                 include_regularization=True, weight_on=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        if meta_grad not in ("auto",) + reweight.META_GRADIENTS:
            raise ValueError(f"meta_grad={meta_grad!r}: choose auto or one of "
                             f"{', '.join(reweight.META_GRADIENTS)}")
        self.model = model
        self.clean_data = clean_data
        self.clean_batch_size = clean_batch_size
        self.requested_meta_grad = meta_grad
        self.include_regularization = include_regularization
        self.seed = seed
        self.weight_on = {name: np.asarray(mask, bool) for name, mask in (weight_on or {}).items()}
        self.per_example_loss = None
        self.zero_weight_fraction = keras.metrics.Mean(name="zero_weight_fraction")
        self.effective_sample_size = keras.metrics.Mean(name="effective_sample_size")
        self.group_weights = {name: keras.metrics.Mean(name=f"weight_on_{name}")
                              for name in self.weight_on}
        self.example_stats = None  # [examples, 3]: times seen, Σ w·n, times at zero

    @property
    def meta_grad(self):
        """The meta-gradient method the step uses (chosen on first use when "auto")."""
        if self.requested_meta_grad == "auto":
            return choose_meta_grad(self.model)
        return self.requested_meta_grad

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """As `keras.Model.compile`; `loss` is taken per example for the L2RW step."""
        self.per_example_loss = per_example(loss)
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def clean_dataset(self, noisy_batch_size):
        """The clean set in endless batches of `clean_batch_size`, reshuffled every pass."""
        data = self.clean_data
        if isinstance(data, tf.data.Dataset):
            ds = data.map(lambda x, y, *sample_weight: (x, y))  # the clean loss is unweighted
            size = int(ds.cardinality())
        else:
            x, y = data
            size = len(tf.nest.flatten(x)[0])
            ds = tf.data.Dataset.from_tensor_slices((x, y))
        if size <= 0:
            raise ValueError("clean_data is empty or of unknown size; give a finite dataset of "
                             "(x, y) pairs or arrays (x, y)")
        batch = self.clean_batch_size or min(size, noisy_batch_size or 100)
        if not 0 < batch <= size:
            raise ValueError(f"clean_batch_size={batch} must be in [1, {size}] (the clean set)")
        return ds.shuffle(size, seed=self.seed + 1, reshuffle_each_iteration=True).repeat() \
            .batch(batch, drop_remainder=True)

    def fit(self, x=None, y=None, batch_size=None, epochs=1, sample_weight=None,
            shuffle=True, class_weight=None, validation_split=0.0, **kwargs):
        """As `keras.Model.fit`, on arrays (x, y) or a dataset of batches (x, y[, sample_weight]);
        the clean batches are zipped in (see the module docstring). Per-example weight
        statistics are kept for array inputs (`example_weights`)."""
        if self.per_example_loss is None:
            raise ValueError("compile the L2RWModel (with a loss) before fit")
        if class_weight is not None:
            raise ValueError("class_weight is not supported: give per-example sample_weight")
        if self.requested_meta_grad == "layerwise":
            try:
                reweight.layerwise_layers(self.model)
            except ValueError as e:
                raise ValueError(f"meta_grad='layerwise' does not apply to this model: {e}; use "
                                 f"meta_grad='auto' or 'jvp'") from None
        if isinstance(x, tf.data.Dataset):
            if y is not None or sample_weight is not None or validation_split:
                raise ValueError("with a dataset, y, sample_weight and validation_split come "
                                 "from the dataset (x, y[, sample_weight])")
            noisy = x.map(lambda *element: _with_defaults(
                element if len(element) > 1 else element[0]))  # map unpacks tuples
            num_examples = 0
            noisy_batch = batch_size
        else:
            if validation_split:
                raise ValueError("validation_split is not supported; pass validation_data")
            noisy, num_examples = _as_dataset(x, y, sample_weight, batch_size, shuffle,
                                              self.seed)
            noisy_batch = batch_size or 32
            self._track_examples(num_examples)
        data = tf.data.Dataset.zip((noisy, self.clean_dataset(noisy_batch)))
        return super().fit(data.prefetch(tf.data.AUTOTUNE), epochs=epochs, shuffle=False,
                           **kwargs)

    def _track_examples(self, num_examples):
        for name, mask in self.weight_on.items():
            if len(mask) != num_examples:
                raise ValueError(f"weight_on[{name!r}] has {len(mask)} entries for "
                                 f"{num_examples} training examples")
        if self.example_stats is None or self.example_stats.shape[0] != num_examples:
            # A weight of the wrapper: saved with it, so BackupAndRestore resumes the statistics.
            self.example_stats = self.add_weight(shape=(num_examples, 3), initializer="zeros",
                                                 trainable=False, name="example_stats")
            self._group_masks = {name: tf.constant(mask) for name, mask in self.weight_on.items()}

    def train_step(self, data):
        # Unpack: the noisy batch that fit was given, and the clean batch zipped beside it.
        (x, y, sample_weight, position), (clean_x, clean_y) = data
        # The step of step.py, the command line's, on the compiled loss per example.
        config = StepConfig(method="l2rw", meta_grad=self.meta_grad,
                            clean_weight_decay=self.include_regularization)
        result = step_gradients(self.model, config, (x, y, sample_weight), (clean_x, clean_y),
                                loss_fn=self.per_example_loss)
        # Update the parameters, then every metric: the compiled ones on the noisy outputs.
        self.optimizer.apply(result.gradients, self.model.trainable_variables)
        self._update_weight_metrics(result.example_weights, position)
        self._loss_tracker.update_state(result.loss)
        return self.compute_metrics(x, y, result.outputs)

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
            self.example_stats.assign(tf.tensor_scatter_nd_add(
                self.example_stats.value, index, tf.boolean_mask(
                    tf.stack([tf.ones_like(weights), weights * n, is_zero], axis=1), known)))
            for name, mask in self._group_masks.items():
                in_group = tf.cast(tf.gather(mask, tf.maximum(position, 0)), tf.float32)
                self.group_weights[name].update_state(
                    tf.reduce_sum(weights * in_group * tf.cast(known, tf.float32)))

    def example_weights(self):
        """Per training example (by position in the arrays given to `fit`): times seen, mean
        weight relative to uniform (1.0 = 1/n) and the fraction of steps at weight zero."""
        if self.example_stats is None:
            raise ValueError("no per-example statistics: fit on arrays (x, y) keeps them")
        seen, weight_sum, zeros = np.asarray(self.example_stats.numpy(), np.float64).T
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"times_seen": seen.astype(np.int64), "mean_weight": weight_sum / seen,
                    "zero_fraction": zeros / seen}

    def label_issues(self, x, y, batch_size=256, from_logits=None, example_ids=None, seed=0):
        """The training examples (the arrays `x`, `y` this model was fitted on), ranked
        likeliest mislabelled first: `l2rw_tf.label_issues(self, x, y, ...)`, see ranking.py."""
        from l2rw_tf.ranking import label_issues
        return label_issues(self, x, y, batch_size=batch_size, from_logits=from_logits,
                            example_ids=example_ids, seed=seed)
