"""L2RWModel's step on the JAX backend of Keras (`KERAS_BACKEND=jax`).

The same step as the TensorFlow one (step.py's `l2rw_step`, reweight.py's mathematics), written
for Keras' stateless JAX trainer: `train_step(state, data)` takes the trainer's variables as
values, (trainable, non-trainable, optimizer, metrics), and returns them updated.

* The per-example losses C_i come from `model.stateless_call(trainable, non_trainable, x,
  training=True)` on the compiled loss taken per example (`per_example`, in keras.ops).
* The clean meta loss l_g: the mean clean loss (plus `model.losses` when
  `include_regularization`), from a training-mode pass whose seed-generator states are moved by
  reweight.CLEAN_PASS_SEED_OFFSET, as `reweight.meta_pass_state(model, clean=True)` moves them: the
  clean pass's dropout masks are its own, the noisy meta pass's are the real step's.
* The alignments ⟨∇θ C_i, ∇θ l_g⟩: `jax.jvp` of the per-example loss vector along
  v = jax.grad(l_g) (the `jvp` method; `layerwise`, a TensorFlow speed-up, computes the same
  numbers by `jvp` here), or −∂l_g(θ − ∇θ Σ ε_i C_i)/∂ε at ε = 0 by nested `jax.grad`
  (`lookahead`).
* Without `meta_dropout` the meta passes are traced inside `reweight.noise_off` (the same context
  manager the TensorFlow step uses, read when the step is traced).
* The weights: `reweight.WEIGHTINGS` (in keras.ops, for both backends), or, for the
  "calibrated" weighting, calibrated.weights_from_alignments (keras.ops too) from four
  alignments (the noisy batch against each half of the clean batch, each half against the
  other: `calibrated_weights`, as calibrated.example_weights), then the gradient of
  Σ w_i C_i + regularisation through the real step's forward pass (from the model's own state:
  BatchNorm statistics and seed states advance as on TensorFlow), and
  `optimizer.stateless_apply`. When the noisy meta pass is the real step's (`jvp` with
  `meta_dropout`, or a model without noise layers; not "calibrated") the two share one pass, as
  `reweight.fused_l2rw_gradients` does: `jax.linearize` of the noisy pass gives the alignments
  (the linear map along the clean gradient) and, through `jax.linear_transpose`, the weighted
  gradient (on LeNet, batch 100, m = 100, CPU: the L2RW step / plain step ratio went from 4.5 to
  3.2 with it; TensorFlow's `layerwise`: 2.9).
* The weight metrics and the per-example statistics (`example_stats`) are updated inside a
  `StatelessScope` that maps the trainer's variables to the traced values.

`stop_on_nan`: a step that is not finite is undone in the step (its values selected away) and
its number handed to the host (`jax.debug.callback`) for fit's StopOnNonFinite to raise.

Mixed precision: under mixed_float16 `compile` wraps the optimizer in a LossScaleOptimizer; the
step multiplies what it differentiates by its current scale as the TensorFlow step does
(precision.py, reweight.py), and the optimizer's `stateless_apply` unscales the gradients or skips
a step whose gradients overflowed (halving the scale); such a step counts in no weight statistic.

`keras.distribution.DataParallel` (e.g. over 2 CPU devices, XLA_FLAGS=
--xla_force_host_platform_device_count=2): Keras' JAX trainer shards each batch, noisy and clean,
along the devices and compiles this same step for the global batch (GSPMD), so every sum, mean and
normalisation is the global batch's, BatchNorm's statistics included: the one-device step, with no
reduction written here (TensorFlow's needs distribute.py's). The clean batch must split evenly
over the devices, as under tf.distribute.
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import ops

from l2rw_tf import precision, reweight


def install(trainer):
    """Makes `trainer` (an L2RWModel) train and evaluate with the JAX steps of this module."""
    trainer.train_step = functools.partial(train_step, trainer)
    trainer.test_step = functools.partial(test_step, trainer)
    trainer._symbolic_build = functools.partial(_symbolic_build, trainer)  # noqa: SLF001
    trainer.distribute_strategy = ONE_REPLICA  # read by L2RWModel.meta_grad and fit's checks


class _OneReplica:
    """What L2RWModel reads of a `tf.distribute` strategy, on a backend without one."""
    num_replicas_in_sync = 1


ONE_REPLICA = _OneReplica()


def per_example(loss):
    """`loss` (as `compile` took it) as a function giving one loss per example, in keras.ops:
    the loss's values unreduced, averaged over any axes beyond the first; computed in at least
    float32 from half-precision outputs (as fit.per_example on TensorFlow)."""
    loss = keras.losses.get(loss)
    values_of = loss.call if isinstance(loss, keras.losses.Loss) else loss

    def per_example_loss(y_true, y_pred):
        y_pred = keras.tree.map_structure(reweight.at_least_float32, y_pred)
        values = ops.convert_to_tensor(values_of(y_true, y_pred))
        if len(values.shape) == 0:
            raise ValueError("the loss returns a scalar; L2RW needs one value per example "
                             "(a keras.losses.Loss, or a function without reduction)")
        if len(values.shape) > 1:
            values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
        return values

    return per_example_loss


def clean_pass_values(model, non_trainable):
    """The non-trainable values of the clean meta pass: `non_trainable` (the model's, in the
    order of `model.non_trainable_variables`) with every seed-generator state moved along its
    counter by CLEAN_PASS_SEED_OFFSET (reweight.meta_pass_state, clean=True)."""
    offset = np.array([0, reweight.CLEAN_PASS_SEED_OFFSET])
    return [value + ops.convert_to_tensor(offset, value.dtype) if reweight.is_seed_state(v)
            else value for v, value in zip(model.non_trainable_variables, non_trainable)]


def _sum(values):
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


def l2rw_gradients(model, trainable, non_trainable, noisy, clean, loss_fn, meta_grad="jvp",
                   include_regularization=True, meta_dropout=False, weighting="proportional",
                   loss_scale=None):
    """One L2RW step of `model` at the values (trainable, non_trainable), in the order of
    `model.trainable_variables` / `model.non_trainable_variables`. Returns (gradients,
    example weights, per-example losses, loss, updated non-trainable values, outputs), as
    reweight.StepGradients holds them on TensorFlow. `loss_scale` (a scalar, or None for none):
    everything differentiated is multiplied by it, as in reweight.py (the clean meta loss, whose
    gradient is divided by it again as the jvp direction, `tangent_direction`; the look-ahead's
    ε-weighted loss, with the step 1/S; the weighted objective), so the gradients come out times
    S and the weights and losses as without it."""
    scale = 1.0 if loss_scale is None else loss_scale

    def batch_pass(params, batch):  # a training-mode pass from the model's own state
        x, y, sample_weight = reweight.unpack(batch)
        outputs, new_non_trainable, reg_losses = model.stateless_call(
            params, non_trainable, x, training=True, return_losses=True)
        losses = loss_fn(y, outputs)
        if sample_weight is not None:
            losses = losses * ops.cast(sample_weight, losses.dtype)
        return losses, (outputs, new_non_trainable, reg_losses)

    def noisy_pass(params):
        return batch_pass(params, noisy)

    def clean_meta_loss(params, against):
        outputs, _, reg_losses = model.stateless_call(
            params, clean_pass_values(model, non_trainable), against[0], training=True,
            return_losses=True)
        loss = ops.mean(loss_fn(against[1], outputs))
        if include_regularization and reg_losses:
            loss = loss + _sum(reg_losses)
        return loss * ops.cast(scale, loss.dtype)

    def tangent_direction(against):  # ∇θ l_g: of the scaled clean loss, unscaled
        grads = jax.grad(clean_meta_loss)(trainable, against)
        return [g / ops.cast(scale, g.dtype) for g in grads]

    def alignment(batch, against):
        """The alignments of `batch`'s examples with the clean batch `against` (reweight.py's
        ALIGNMENTS: `lookahead`, or `jvp` for `jvp` and `layerwise`)."""
        def losses_of(params):
            return batch_pass(params, batch)[0]

        if meta_grad == "lookahead":
            def lookahead_loss(eps):  # α = 1: the step is 1/S of the scaled loss's gradient
                step = jax.grad(lambda p: jnp.sum(eps * losses_of(p)) * scale)(trainable)
                return clean_meta_loss([p - g / ops.cast(scale, g.dtype)
                                        for p, g in zip(trainable, step)], against)

            return -jax.grad(lookahead_loss)(jnp.zeros_like(losses_of(trainable)))
        return jax.jvp(losses_of, (trainable,), (tangent_direction(against),))[1]

    silent = not meta_dropout and reweight.noise_layers(model)
    if weighting != "calibrated" and meta_grad != "lookahead" and not silent:
        # Fused, as reweight.fused_l2rw_gradients: the noisy meta pass is the real step's, so one
        # linearised noisy pass gives the alignments (the linear map along the clean gradient)
        # and, transposed, the gradient of Σ w_i C_i + regularisation.
        def noisy_objectives(params):
            losses, (outputs, new_non_trainable, reg_losses) = noisy_pass(params)
            regularization = _sum(reg_losses) if reg_losses else jnp.zeros((), losses.dtype)
            return (losses, regularization), (outputs, new_non_trainable)

        direction = tangent_direction(clean)
        (losses, regularization), linear, (outputs, new_non_trainable) = jax.linearize(
            noisy_objectives, trainable, has_aux=True)
        weights = jax.lax.stop_gradient(reweight.WEIGHTINGS[weighting](linear(direction)[0]))
        cast_weights = ops.cast(weights, losses.dtype)
        (grads,) = jax.linear_transpose(linear, trainable)(
            (cast_weights * ops.cast(scale, losses.dtype),
             jnp.full_like(regularization, scale)))
        loss = jnp.sum(cast_weights * losses) + regularization
        return grads, weights, losses, loss, new_non_trainable, outputs
    with reweight.noise_off(model) if silent else contextlib.nullcontext():
        if weighting == "calibrated":
            weights = calibrated_weights(alignment, noisy, clean)
        else:
            weights = reweight.WEIGHTINGS[weighting](alignment(noisy, clean))
    weights = jax.lax.stop_gradient(weights)

    def objective(params):
        losses, (outputs, new_non_trainable, reg_losses) = noisy_pass(params)
        loss = jnp.sum(ops.cast(weights, losses.dtype) * losses)
        if reg_losses:
            loss = loss + _sum(reg_losses)
        return loss * ops.cast(scale, loss.dtype), (loss, losses, outputs, new_non_trainable)

    (_, (loss, losses, outputs, new_non_trainable)), grads = jax.value_and_grad(
        objective, has_aux=True)(trainable)
    return grads, weights, losses, loss, new_non_trainable, outputs


def calibrated_weights(alignment, noisy, clean):
    """calibrated.py's weights: the noisy batch aligned with each half of the clean batch (the
    first ⌊m/2⌋ examples, the rest), and each half with the other (the null), by `alignment(batch,
    against)`; the weights from them by calibrated.weights_from_alignments (keras.ops)."""
    from l2rw_tf import calibrated
    half = clean[1].shape[0] // 2
    first = keras.tree.map_structure(lambda t: t[:half], tuple(clean[:2]))
    second = keras.tree.map_structure(lambda t: t[half:], tuple(clean[:2]))
    null = ops.concatenate([alignment(first, second), alignment(second, first)], axis=0)
    return calibrated.weights_from_alignments(alignment(noisy, first), alignment(noisy, second),
                                              null)


def step_fields(trainer):
    """{meta_dropout, weighting} of `trainer`'s step, as its TensorFlow train_step sets them in
    its StepConfig: those of its `algorithm` (fit.ALGORITHMS)."""
    from l2rw_tf.fit import ALGORITHMS  # fit imports this module
    return dict(ALGORITHMS[trainer.algorithm])


def _positions(variables, subset):
    """The index in `variables` of each variable of `subset`."""
    index = {id(v): i for i, v in enumerate(variables)}
    return [index[id(v)] for v in subset]


def train_step(trainer, state, data):
    """Keras' JAX `train_step(state, data)` for an L2RWModel: the L2RW step on the noisy batch
    with the clean batch zipped beside it, the optimizer's stateless update, the weight metrics,
    the per-example statistics and the compiled metrics. Under a LossScaleOptimizer
    (mixed_float16) the step's losses are scaled by its current scale, as on TensorFlow
    (precision.loss_scale), and it divides the gradients by it, or skips the step (halving the
    scale) when one overflowed: a skipped step counts in no weight statistic."""
    trainable, non_trainable, optimizer_values, metrics_values = state
    (x, y, sample_weight, position), (clean_x, clean_y) = data
    model, optimizer = trainer.model, trainer.optimizer
    with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, optimizer_values))):
        loss_scale = precision.loss_scale(optimizer)
    t_index = _positions(trainer.trainable_variables, model.trainable_variables)
    n_index = _positions(trainer.non_trainable_variables, model.non_trainable_variables)
    grads, weights, losses, loss, new_model_values, outputs = l2rw_gradients(
        model, [trainable[i] for i in t_index], [non_trainable[i] for i in n_index],
        (x, y, sample_weight), (clean_x, clean_y), per_example(trainer._label_loss),  # noqa: SLF001
        meta_grad=trainer.meta_grad, include_regularization=trainer.include_regularization,
        loss_scale=loss_scale, **step_fields(trainer))
    # The gradients in the trainer's order (the wrapper has no trainable variable of its own).
    trainer_grads = [None] * len(trainable)
    for i, grad in zip(t_index, grads):
        trainer_grads[i] = grad
    before = (trainable, non_trainable, optimizer_values, metrics_values)
    step = optimizer_values[_positions(optimizer.variables, [optimizer.iterations])[0]] + 1
    trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, trainer_grads,
                                                            trainable)
    non_trainable = list(non_trainable)
    for i, value in zip(n_index, new_model_values):
        non_trainable[i] = value

    # The statistics, as the TensorFlow step keeps them: read and written through a scope that
    # maps the metrics' variables and `example_stats` to this step's values.
    mapping = list(zip(trainer.metrics_variables, metrics_values))
    stats = trainer.example_stats
    if stats is not None:
        mapping.append((stats, non_trainable[_positions(trainer.non_trainable_variables,
                                                        [stats])[0]]))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        update_weight_metrics(trainer, weights, position)
        trainer._loss_tracker.update_state(loss)  # noqa: SLF001
        logs = trainer.compute_metrics(x, y, outputs)
    after = (trainable, [_current(scope, v) if v is stats else value
                         for v, value in zip(trainer.non_trainable_variables, non_trainable)],
             optimizer_values, [_current(scope, v) for v in trainer.metrics_variables])

    # stop_on_nan checks the losses and the updated model variables, and the loss and weights
    # unless a LossScaleOptimizer (which skips the steps they overflow) is in charge of them.
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    finite = None
    if trainer.stop_on_nan:
        finite = _all_finite([losses, *([] if scaled else [loss, weights]), *after[0],
                              *(after[1][i] for i in n_index)])
    counted = finite
    if scaled:
        kept = optimizer.check_finite(trainer_grads)
        counted = kept if finite is None else jnp.logical_and(kept, finite)
    if counted is not None:
        after = _statistics_counted_if(trainer, counted, before, after)
    if finite is not None:
        after = _kept_unless_finite(trainer, finite, step, before, after)
    return logs, after


def _all_finite(tensors):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in tensors
                              if jnp.issubdtype(jnp.asarray(t).dtype, jnp.floating)]))


def _statistics_counted_if(trainer, counted, before, after):
    """The state `after` a step, except that the weight statistics (the weight metrics, the loss
    and `example_stats`) are as `before` it unless it is `counted`; the compiled metrics take its
    outputs either way, as on TensorFlow."""
    statistics = [trainer.zero_weight_fraction, trainer.effective_sample_size,
                  trainer._loss_tracker, *trainer.group_weights.values()]  # noqa: SLF001
    kept = {id(v) for metric in statistics for v in metric.variables}
    if trainer.example_stats is not None:
        kept.add(id(trainer.example_stats))

    def select(variables, old, new):
        return [jnp.where(counted, b, a) if id(v) in kept else b
                for v, a, b in zip(variables, old, new)]

    return (after[0], select(trainer.non_trainable_variables, before[1], after[1]), after[2],
            select(trainer.metrics_variables, before[3], after[3]))


def _kept_unless_finite(trainer, finite, step, before, after):
    """stop_on_nan, as the TensorFlow step: a step that is not `finite` leaves the model's and
    the optimizer's values as they were `before` it (the statistics already are:
    `_statistics_counted_if`), and `trainer.diverged_at` (read by fit's StopOnNonFinite callback)
    becomes its number, 1-based, the first such step's."""
    def select(old, new):
        return [jnp.where(finite, b, a) for a, b in zip(old, new)]

    def record(finite, step):
        if not finite and int(trainer.diverged_at.numpy()) < 0:
            trainer.diverged_at.assign(int(step))

    jax.debug.callback(record, finite, step)
    return (*(select(a, b) for a, b in zip(before[:3], after[:3])), after[3])


def _current(scope, variable):
    value = scope.get_current_value(variable)
    return variable.value if value is None else value


def update_weight_metrics(trainer, weights, position):
    """zero_weight_fraction, effective_sample_size, weight_on_<name> and `example_stats` (times
    seen, Σ w·n, times at zero), as L2RWModel._update_weight_metrics on TensorFlow."""
    weights = ops.cast(weights, "float32")
    n = weights.shape[0]
    is_zero = ops.cast(ops.equal(weights, 0.0), "float32")
    trainer.zero_weight_fraction.update_state(ops.mean(is_zero))
    squares = ops.sum(ops.square(weights))
    trainer.effective_sample_size.update_state(
        ops.where(squares > 0, 1.0 / ops.maximum(squares, 1e-30), 0.0))
    if trainer.example_stats is None:
        return
    known = position >= 0
    index = jnp.where(known, position, 0)
    updates = jnp.stack([jnp.ones_like(weights), weights * n, is_zero], axis=1)
    updates = jnp.where(known[:, None], updates, 0.0)
    stats = trainer.example_stats
    stats.assign(stats.value.at[index].add(updates.astype(stats.dtype)))
    for name, mask in trainer.weight_on.items():
        in_group = jnp.asarray(mask, jnp.float32)[index]
        trainer.group_weights[name].update_state(
            jnp.sum(weights * in_group * known.astype(jnp.float32)))


def test_step(trainer, state, data):
    """The wrapped model's evaluation (Keras' JAX test step), without L2RW's weight metrics."""
    logs, state = keras.Model.test_step(trainer, state, data)
    names = trainer._weight_metric_names()  # noqa: SLF001
    return {k: v for k, v in logs.items() if k not in names}, state


def _symbolic_build(trainer, iterator=None, data_batch=None):
    """Keras' JAX `fit` builds the compiled loss and metrics on the first element of the
    iterator: given the noisy part of it, (x, y, sample_weight), as on TensorFlow."""
    if data_batch is None and iterator is not None:
        try:
            for _, _, data in iterator:  # a distribution shards the element here
                data_batch = data[0] if isinstance(data, (list, tuple)) else next(data)
                break
        except ValueError as e:
            _refuse_uneven_clean_batches(trainer, e)
            raise
    type(trainer)._symbolic_build(trainer, data_batch=data_batch)  # noqa: SLF001


def data_parallel_devices():
    """How many devices `keras.distribution`'s batch dimension spans (1 without one)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return dict(zip(mesh.axis_names, mesh.shape))[distribution.batch_dim_name]


def _refuse_uneven_clean_batches(trainer, error):
    """A clean batch that does not split over the devices, as on TensorFlow (fit.train_step)."""
    devices = data_parallel_devices()
    clean_batch = getattr(trainer, "_clean_batch", None)
    if devices > 1 and clean_batch and clean_batch % devices:
        raise ValueError(f"the clean batch of {clean_batch} does not split evenly over "
                         f"{devices} devices: give a clean_batch_size divisible by them") from error
