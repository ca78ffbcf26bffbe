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
* The weights: `reweight.WEIGHTINGS` (in keras.ops, for both backends), then the gradient of
  Σ w_i C_i + regularisation through the real step's forward pass (from the model's own state:
  BatchNorm statistics and seed states advance as on TensorFlow), and
  `optimizer.stateless_apply`. When the noisy meta pass is the real step's (`jvp` with
  `meta_dropout`, or a model without noise layers) the two share one pass, as
  `reweight.fused_l2rw_gradients` does: `jax.linearize` of the noisy pass gives the alignments
  (the linear map along the clean gradient) and, through `jax.linear_transpose`, the weighted
  gradient (on LeNet, batch 100, m = 100, CPU: the L2RW step / plain step ratio went from 4.5 to
  3.2 with it; TensorFlow's `layerwise`: 2.9).
* The weight metrics and the per-example statistics (`example_stats`) are updated inside a
  `StatelessScope` that maps the trainer's variables to the traced values.

`stop_on_nan`: a step that is not finite is undone in the step (its values selected away) and
its number handed to the host (`jax.debug.callback`) for fit's StopOnNonFinite to raise.
Not on JAX yet: a LossScaleOptimizer (mixed_float16, refused) and `keras.distribution` (one
device).
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from keras import ops

from l2rw_tf import reweight


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
                   include_regularization=True, meta_dropout=False, weighting="proportional"):
    """One L2RW step of `model` at the values (trainable, non_trainable), in the order of
    `model.trainable_variables` / `model.non_trainable_variables`. Returns (gradients,
    example weights, per-example losses, loss, updated non-trainable values, outputs), as
    reweight.StepGradients holds them on TensorFlow."""
    x, y, sample_weight = reweight.unpack(noisy)
    clean_x, clean_y = clean[:2]

    def noisy_pass(params):
        outputs, new_non_trainable, reg_losses = model.stateless_call(
            params, non_trainable, x, training=True, return_losses=True)
        losses = loss_fn(y, outputs)
        if sample_weight is not None:
            losses = losses * ops.cast(sample_weight, losses.dtype)
        return losses, (outputs, new_non_trainable, reg_losses)

    def clean_meta_loss(params):
        outputs, _, reg_losses = model.stateless_call(
            params, clean_pass_values(model, non_trainable), clean_x, training=True,
            return_losses=True)
        loss = ops.mean(loss_fn(clean_y, outputs))
        if include_regularization and reg_losses:
            loss = loss + _sum(reg_losses)
        return loss

    def noisy_losses(params):
        return noisy_pass(params)[0]

    silent = not meta_dropout and reweight.noise_layers(model)
    if meta_grad != "lookahead" and not silent:
        # Fused, as reweight.fused_l2rw_gradients: the noisy meta pass is the real step's, so one
        # linearised noisy pass gives the alignments (the linear map along the clean gradient)
        # and, transposed, the gradient of Σ w_i C_i + regularisation.
        def noisy_objectives(params):
            losses, (outputs, new_non_trainable, reg_losses) = noisy_pass(params)
            regularization = _sum(reg_losses) if reg_losses else jnp.zeros((), losses.dtype)
            return (losses, regularization), (outputs, new_non_trainable)

        direction = jax.grad(clean_meta_loss)(trainable)
        (losses, regularization), linear, (outputs, new_non_trainable) = jax.linearize(
            noisy_objectives, trainable, has_aux=True)
        weights = jax.lax.stop_gradient(reweight.WEIGHTINGS[weighting](linear(direction)[0]))
        cast_weights = ops.cast(weights, losses.dtype)
        (grads,) = jax.linear_transpose(linear, trainable)(
            (cast_weights, jnp.ones_like(regularization)))
        loss = jnp.sum(cast_weights * losses) + regularization
        return grads, weights, losses, loss, new_non_trainable, outputs
    with reweight.noise_off(model) if silent else contextlib.nullcontext():
        if meta_grad == "lookahead":
            def lookahead_loss(eps):
                step = jax.grad(lambda p: jnp.sum(eps * noisy_losses(p)))(trainable)
                return clean_meta_loss([p - g for p, g in zip(trainable, step)])

            losses = noisy_losses(trainable)
            alignment = -jax.grad(lookahead_loss)(jnp.zeros_like(losses))
        else:  # jvp (and layerwise, the same inner products)
            direction = jax.grad(clean_meta_loss)(trainable)
            _, alignment = jax.jvp(noisy_losses, (trainable,), (direction,))
    weights = jax.lax.stop_gradient(reweight.WEIGHTINGS[weighting](alignment))

    def objective(params):
        losses, (outputs, new_non_trainable, reg_losses) = noisy_pass(params)
        loss = jnp.sum(ops.cast(weights, losses.dtype) * losses)
        if reg_losses:
            loss = loss + _sum(reg_losses)
        return loss, (losses, outputs, new_non_trainable)

    (loss, (losses, outputs, new_non_trainable)), grads = jax.value_and_grad(
        objective, has_aux=True)(trainable)
    return grads, weights, losses, loss, new_non_trainable, outputs


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
    the per-example statistics and the compiled metrics."""
    trainable, non_trainable, optimizer_values, metrics_values = state
    (x, y, sample_weight, position), (clean_x, clean_y) = data
    model = trainer.model
    if isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError("L2RWModel on JAX does not support a LossScaleOptimizer (mixed_float16) "
                         "yet: use the TensorFlow backend for it")
    t_index = _positions(trainer.trainable_variables, model.trainable_variables)
    n_index = _positions(trainer.non_trainable_variables, model.non_trainable_variables)
    grads, weights, losses, loss, new_model_values, outputs = l2rw_gradients(
        model, [trainable[i] for i in t_index], [non_trainable[i] for i in n_index],
        (x, y, sample_weight), (clean_x, clean_y), per_example(trainer._label_loss),  # noqa: SLF001
        meta_grad=trainer.meta_grad, include_regularization=trainer.include_regularization,
        **step_fields(trainer))
    # The gradients in the trainer's order (the wrapper has no trainable variable of its own).
    trainer_grads = [None] * len(trainable)
    for i, grad in zip(t_index, grads):
        trainer_grads[i] = grad
    before = (trainable, non_trainable, optimizer_values, metrics_values)
    step = optimizer_values[_positions(trainer.optimizer.variables,
                                       [trainer.optimizer.iterations])[0]] + 1
    trainable, optimizer_values = trainer.optimizer.stateless_apply(
        optimizer_values, trainer_grads, trainable)
    non_trainable = list(non_trainable)
    for i, value in zip(n_index, new_model_values):
        non_trainable[i] = value
    finite = None
    if trainer.stop_on_nan:
        finite = _all_finite([losses, loss, weights, *trainable,
                              *(non_trainable[i] for i in n_index)])

    # The statistics, as the TensorFlow step keeps them: read and written through a scope that
    # maps the metrics' variables and `example_stats` to this step's values.
    mapping = list(zip(trainer.metrics_variables, metrics_values))
    stats = trainer.example_stats
    stats_index = None
    if stats is not None:
        stats_index = _positions(trainer.non_trainable_variables, [stats])[0]
        mapping.append((stats, non_trainable[stats_index]))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        update_weight_metrics(trainer, weights, position)
        trainer._loss_tracker.update_state(loss)  # noqa: SLF001
        logs = trainer.compute_metrics(x, y, outputs)
    metrics_values = [_current(scope, v) for v in trainer.metrics_variables]
    if stats is not None:
        non_trainable[stats_index] = _current(scope, stats)
    if finite is not None:
        trainable, non_trainable, optimizer_values, metrics_values = _kept_unless_finite(
            trainer, finite, step, before, (trainable, non_trainable, optimizer_values,
                                            metrics_values))
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


def _all_finite(tensors):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in tensors
                              if jnp.issubdtype(jnp.asarray(t).dtype, jnp.floating)]))


def _kept_unless_finite(trainer, finite, step, before, after):
    """stop_on_nan, as the TensorFlow step: a step that is not `finite` leaves the model's and
    the optimizer's values, the weight statistics and the loss as they were `before` it (the
    compiled metrics take its outputs, as on TensorFlow), and `trainer.diverged_at` (read by
    fit's StopOnNonFinite callback) becomes its number, 1-based, the first such step's."""
    def select(old, new):
        return [jnp.where(finite, b, a) for a, b in zip(old, new)]

    trainable, non_trainable, optimizer_values = (select(a, b)
                                                  for a, b in zip(before[:3], after[:3]))
    statistics = [trainer.zero_weight_fraction, trainer.effective_sample_size,
                  trainer._loss_tracker, *trainer.group_weights.values()]  # noqa: SLF001
    kept = {id(v) for metric in statistics for v in metric.variables}
    metrics_values = [jnp.where(finite, new, old) if id(v) in kept else new
                      for v, old, new in zip(trainer.metrics_variables, before[3], after[3])]

    def record(finite, step):
        if not finite and int(trainer.diverged_at.numpy()) < 0:
            trainer.diverged_at.assign(int(step))

    jax.debug.callback(record, finite, step)
    return trainable, non_trainable, optimizer_values, metrics_values


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
        for _, _, data in iterator:
            data_batch = data[0] if isinstance(data, (list, tuple)) else next(data)
            break
    type(trainer)._symbolic_build(trainer, data_batch=data_batch)  # noqa: SLF001
