"""Learning to Reweight Examples: the per-step example weights (Ren et al. 2018, Algorithm 1).

For a noisy batch (x_f, y_f) of n examples and a clean batch (x_g, y_g) of m examples:

    l_f(θ, ε) = Σ_i ε_i C(y_i, f(x_i; θ))                          (ε = 0)
    θ̂(ε)     = θ − α ∇θ l_f(θ, ε)                                  look-ahead
    l_g(θ̂)   = 1/m Σ_j C(y_j, f(x_j; θ̂))  [+ regularisation(θ̂)]
    w̃_i      = max(−∂l_g/∂ε_i |ε=0, 0)
    w_i       = w̃_i / (Σ w̃ + δ(Σ w̃))                               δ(a) = 1 iff a = 0

Two exact ways to get −∂l_g/∂ε at ε = 0 (reference §1):

* `lookahead`: the algorithm as written, nested `tf.GradientTape`s through θ̂ (α = 1, as the
  original MNIST code).
* `jvp`: at ε = 0, θ̂ = θ, so −∂l_g/∂ε_i = α ⟨∇θ C_i(θ), ∇θ l_g(θ)⟩: one forward-mode product of
  the per-example loss vector C(θ) in the direction v = ∇θ l_g(θ). α only rescales w̃, and the
  normalisation removes it.

* `layerwise` (models whose examples are independent: a chain of Dense / Conv2D and parameter-free
  layers, no BatchNorm or dropout): the same inner products without forward mode. One forward and
  one backward pass over the noisy and clean batches together gives every example's output
  gradient δ of every layer (examples do not interact); the clean rows give the clean gradient
  (V, v_b) layer by layer, and for a layer z = a ∗ W + b,
  ⟨∇_W C_i, V⟩ + ⟨∇_b C_i, v_b⟩ = ⟨δ_i, a_i ∗ V + v_b⟩: one convolution (or matmul) of the layer's
  noisy input with the clean gradient. The weighted step's gradient then comes from the same δ_i
  scaled by w_i, with no second backward pass.

`jvp` and `layerwise` also come fused with the real step (`fused_l2rw_gradients`,
`layerwise_l2rw_gradients`): the weights and the weighted gradient from one noisy forward pass.

Every meta pass runs through `Model.stateless_call` in training mode: BatchNorm normalises with the
pass's own batch statistics, dropout stays active, and the updated moving statistics it returns are
discarded, so no variable is ever touched here. Dropout masks: the noisy meta pass draws the masks
the real step draws (it is the real step's forward pass, or the same pass from the same state); the
clean pass draws masks of its own, independent of the noisy ones, as the original TF1 code does
(`meta_pass_state`).

Sparse gradients (an `Embedding`'s, a `tf.IndexedSlices`) are made dense only where the algorithm
adds them to the parameters (the look-ahead θ̂); the gradients returned for the real step are the
tape's own, IndexedSlices included, which Keras optimizers take as they are.

Dtypes: nothing here is float32 by default. Constants take the dtype of the tensor they meet (ε
that of the per-example losses; absent regularisation is no term at all rather than a float32
zero), so a float64 model runs in float64 throughout and the weights come out in the losses' dtype.
Under a mixed-precision policy (mixed_bfloat16, mixed_float16: layers compute in half precision,
variables stay float32) the losses are computed in float32 from the half-precision outputs
(`at_least_float32`), and the alignments and their normalisation are accumulated in float32: a
float16 sum of products of gradients underflows or overflows, a bfloat16 one keeps 8 bits. A loss
scale S (mixed_float16, precision.py) multiplies every alignment of a batch by the same factor
(S² for `layerwise`, S for `lookahead`, 1 for `jvp`, whose forward-mode direction is unscaled:
`tangent_direction`), which the normalisation removes. Every function that differentiates takes
S as `loss_scale` (None: no scaling): it multiplies the objective it differentiates (noisy
losses, clean meta loss, regularisation alike), and the gradients it returns are scaled by it
(the LossScaleOptimizer divides them); the losses it returns are not.
"""
import contextlib
from typing import NamedTuple

import keras
import tensorflow as tf

from l2rw_tf import distribute
from l2rw_tf.choices import META_GRADIENTS  # noqa: F401 -- jvp, lookahead, layerwise


def at_least_float32(tensor):
    """`tensor` in float32 if it is in half precision (float16 / bfloat16: the outputs of a model
    under a mixed policy), else as it is (float32, float64). Losses and the sums of the weights
    are computed from it, as Keras computes its losses in float32 under a mixed policy. In
    keras.ops: the JAX step (jax_step.py) uses it too."""
    if keras.backend.standardize_dtype(tensor.dtype) in ("float16", "bfloat16"):
        return keras.ops.cast(tensor, "float32")
    return tensor


def per_example_loss(labels, logits):
    """Cross-entropy per example: sigmoid for a single logit (binary task), softmax otherwise.
    Computed in float32 from half-precision logits (`at_least_float32`)."""
    logits = at_least_float32(logits)
    if logits.shape[-1] == 1:
        labels = tf.cast(tf.reshape(labels, [-1]), logits.dtype)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits[:, 0])
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits)


class StepGradients(NamedTuple):
    """What every step function returns (the L2RW steps here, every method in step.py)."""
    gradients: list           # one per trainable variable (IndexedSlices for sparse ones)
    example_weights: tf.Tensor  # [n], a constant
    losses: tf.Tensor         # [n] per-example losses of the noisy batch
    loss: tf.Tensor           # Σ w_i C_i + regularisation: the objective of the step
    non_trainable: list = None  # updated non-trainable values (BN statistics, seed states), or
                                # None when the step changed none (the caller assigns them)
    outputs: tf.Tensor = None   # the noisy batch's outputs (logits), for metrics


def unpack(batch):
    """(x, y, sample_weight or None) of a noisy batch (x, y) or (x, y, sample_weight)."""
    return (tuple(batch) + (None,))[:3]


def scaled(losses, sample_weight):
    """Per-example losses times their sample weights s_i (none: as they are). A noisy example's
    loss is s_i·C_i throughout a step: its alignment scales by s_i, and so does its gradient in
    the weighted step, so s_i = 0 gives weight 0 and a common factor cancels."""
    return losses if sample_weight is None else losses * tf.cast(sample_weight, losses.dtype)


def times_loss_scale(x, loss_scale):
    """`x` times the loss scale, or `x` when there is none (None)."""
    return x if loss_scale is None else x * tf.cast(loss_scale, x.dtype)


def normalize_weights(raw_weights):
    """w = max(raw, 0) / (Σ max(raw, 0) + δ): all-zero weights stay all zero. Summed in at least
    float32, whatever the alignments were computed in. Under a strategy, Σ is the global batch's
    (an all-reduce of one float, distribute.py). In keras.ops, for every backend (jax_step.py)."""
    clipped = keras.ops.maximum(at_least_float32(raw_weights), 0.0)
    total = distribute.replica_sum(keras.ops.sum(clipped))
    return clipped / (total + keras.ops.cast(keras.ops.equal(total, 0.0), total.dtype))


def equal_weights(raw_weights):
    """w = 1[raw > 0] / #(raw > 0): every example of positive alignment gets the same weight,
    the others 0 (all zero when none is positive). The clean set then decides which examples
    the step takes, not how much each counts: the weighted gradient is the mean gradient of the
    examples kept, as plain training's of its batch. (With `normalize_weights` it is
    Σ_i ⟨∇C_i, v⟩ ∇C_i over the kept ones, the clean gradient v through the noisy examples'
    outer products, which leans on the few examples of largest gradient.) A non-finite alignment
    (float16 overflowed in the meta pass) makes every weight NaN, as it makes the proportional
    ones (∞/∞), so that a LossScaleOptimizer skips the step. Under a strategy the count (and the
    check) is the global batch's: one all-reduce of two floats. In keras.ops, for every backend
    (jax_step.py)."""
    ops = keras.ops
    raw = at_least_float32(raw_weights)
    kept = ops.cast(raw > 0, raw.dtype)
    non_finite = ops.cast(ops.logical_not(ops.isfinite(raw)), raw.dtype)
    count, non_finite = ops.unstack(distribute.replica_sum(
        ops.stack([ops.sum(kept), ops.sum(non_finite)])))
    weights = kept / ops.maximum(count, 1.0)
    return ops.where(non_finite > 0, ops.full_like(weights, float("nan")), weights)


# How the clipped alignments become weights, by name (`StepConfig.weighting`): the paper's
# proportional normalisation, or equal weights on the examples of positive alignment.
WEIGHTINGS = {"proportional": normalize_weights, "equal": equal_weights}


# The clean meta pass's seed-generator states sit this far along their counter (see
# `meta_pass_state`): 2^30, half of the int32 range the TF backend reduces seeds to.
CLEAN_PASS_SEED_OFFSET = 2 ** 30


def is_seed_state(variable):
    """True for the state of a `keras.random.SeedGenerator` (dropout's and other random layers')."""
    return variable.name == "seed_generator_state"


def meta_pass_state(model, clean=False):
    """The non-trainable values a meta pass starts from (BN moving statistics, seed states).

    The noisy pass (`clean=False`) starts from the model's own values: its dropout masks are the
    ones the real step's forward pass draws from the same state, so the fused steps (one pass)
    equal `example_weights` followed by `model(x, training=True)`.

    The clean pass gets the same values except that every seed-generator state is moved along its
    counter by CLEAN_PASS_SEED_OFFSET. Without that its m masks would be the first m rows of the
    noisy pass's (the same stateless seed, a smaller shape); the original code draws the two passes'
    masks independently. Why the moved state gives independent masks: a SeedGenerator's state is
    [seed, counter]; each draw uses the pair as the stateless seed, then counts up by one
    (keras/src/random/seed_generator.py). The TF backend reduces both entries modulo 2^31 − 2 to
    int32, and TF's stateless ops scramble the pair through Philox into a key and counter, so
    distinct pairs give unrelated streams. The real (and noisy) passes draw [s, c] for
    c = 0, 1, 2, ... (one per step per dropout layer); the clean pass draws [s, c + 2^30], which no
    other pass reaches before its generator has drawn 2^30 − 2 ≈ 1.07e9 times: no plausible run.
    The clean masks change every step (c does) and are a function of the checkpointed state, so a
    resumed run draws them again bit for bit; the moved values are handed to `stateless_call`
    only, and the states it returns are discarded, so no variable changes.
    """
    values = [v.value for v in model.non_trainable_variables]
    if not clean:
        return values
    return [value + tf.constant([0, CLEAN_PASS_SEED_OFFSET], value.dtype) if is_seed_state(v)
            else value for v, value in zip(model.non_trainable_variables, values)]


# The layers whose training-mode call adds random noise, with the attribute that sets how much
# (SpatialDropout1D/2D/3D are Dropout layers). Each skips its noise when that attribute is 0.
NOISE_LAYERS = ((keras.layers.Dropout, "rate"), (keras.layers.AlphaDropout, "rate"),
                (keras.layers.GaussianDropout, "rate"), (keras.layers.GaussianNoise, "stddev"))


def noise_layers(model):
    """[(layer, attribute)] of every dropout or noise layer of `model` (nested models included)."""
    return [(layer, attribute) for layer in model._flatten_layers()  # noqa: SLF001
            for kind, attribute in NOISE_LAYERS if isinstance(layer, kind)]


@contextlib.contextmanager
def noise_off(model):
    """Every dropout and noise layer of `model` draws no noise while inside: its rate (stddev) is
    0 while the calls made inside are traced, and set back on leaving. Everything else runs as in
    training mode (BatchNorm on the batch's statistics). The meta passes of L2RWModel's default
    (`StepConfig.meta_dropout=False`) run inside it: one dropout draw makes an example's
    alignment mostly noise (results/stability/README.md)."""
    layers = noise_layers(model)
    values = [getattr(layer, attribute) for layer, attribute in layers]
    for layer, attribute in layers:
        setattr(layer, attribute, 0.0)
    try:
        yield
    finally:
        for (layer, attribute), value in zip(layers, values):
            setattr(layer, attribute, value)


def forward(model, params, x, return_losses=False, clean=False):
    """Training-mode forward pass at `params` that leaves every model variable untouched.
    `clean`: the clean batch's pass, with dropout masks of its own (`meta_pass_state`)."""
    non_trainable = meta_pass_state(model, clean)
    if return_losses:
        logits, _, losses = model.stateless_call(
            params, non_trainable, x, training=True, return_losses=True)
        return logits, losses
    logits, _ = model.stateless_call(params, non_trainable, x, training=True)
    return logits


def clean_loss(model, params, clean_batch, include_regularization, loss_fn=per_example_loss,
               loss_scale=None):
    """l_g at `params`: the mean clean loss, plus the model's regularisation losses
    (e.g. weight decay, as the original CIFAR code) when `include_regularization`; times
    `loss_scale` if given."""
    x, y = clean_batch[:2]
    logits, reg_losses = forward(model, params, x, return_losses=True, clean=True)
    loss = tf.reduce_mean(loss_fn(y, logits))
    if include_regularization and reg_losses:
        loss += tf.add_n(reg_losses)
    return times_loss_scale(loss, loss_scale)


def current_params(model):
    return [tf.identity(v.value) for v in model.trainable_variables]


def _lookahead(model, noisy_batch, clean_batch, include_regularization, step_size,
               keep_tape=False, loss_fn=per_example_loss, loss_scale=None):
    """Algorithm 1 at ε = 0: −∂l_g(θ̂(ε))/∂ε through the look-ahead θ̂ = θ − α∇θ Σ ε_i C_i.
    Returns (alignment, inner tape (persistent if `keep_tape`), params, per-example losses,
    regularisation loss (None without one), updated non-trainable values, outputs) so that the
    real step can reuse the pass."""
    x, y, sample_weight = unpack(noisy_batch)
    params = current_params(model)
    with tf.GradientTape() as outer:
        with tf.GradientTape(persistent=keep_tape) as inner:
            inner.watch(params)
            logits, new_non_trainable, reg_losses = model.stateless_call(
                params, meta_pass_state(model), x, training=True, return_losses=True)
            losses = scaled(loss_fn(y, logits), sample_weight)
            regularization = tf.add_n(reg_losses) if reg_losses else None
            eps = tf.zeros_like(losses)  # ε = 0, in the losses' dtype
            outer.watch(eps)
            noisy_loss = tf.reduce_sum(eps * times_loss_scale(losses, loss_scale))
        grads = inner.gradient(noisy_loss, params,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # θ̂ = θ − α∇θ l_f. An Embedding's gradient is an IndexedSlices (the batch's rows), which
        # does not scale or subtract: made dense, as θ̂ is (the densifying op is differentiable).
        # With a loss scale S the gradient is S·∇θ l_f, and the step α/S: the same θ̂, and what
        # the outer gradient carries back through the noisy pass (in half precision) has the
        # magnitude of an unscaled pass's; S times larger, it would overflow float16.
        if loss_scale is not None:
            step_size = step_size / tf.cast(loss_scale, losses.dtype)
        lookahead_params = [p - step_size * tf.convert_to_tensor(g) for p, g in zip(params, grads)]
        # Under a strategy the clean loss's gradient at θ̂ is averaged over the replicas: the
        # global clean batch's (distribute.py).
        lookahead_params = distribute.with_replica_mean_gradient(lookahead_params)
        meta_loss = clean_loss(model, lookahead_params, clean_batch, include_regularization,
                               loss_fn, loss_scale)
    alignment = -outer.gradient(meta_loss, eps)
    return alignment, inner, params, losses, regularization, new_non_trainable, logits


def lookahead_alignment(model, noisy_batch, clean_batch, include_regularization=False,
                        step_size=1.0, loss_fn=per_example_loss, loss_scale=None):
    """−∂l_g(θ̂(ε))/∂ε at ε = 0, by differentiating through the look-ahead step (Algorithm 1)."""
    return _lookahead(model, noisy_batch, clean_batch, include_regularization, step_size,
                      loss_fn=loss_fn, loss_scale=loss_scale)[0]


def clean_gradient(model, params, clean_batch, include_regularization=False,
                   loss_fn=per_example_loss, loss_scale=None):
    """v = ∇θ l_g(θ), the direction every example's gradient is compared with (times
    `loss_scale` if given). Under a strategy, the mean of the replicas' clean gradients: the
    global clean batch's (an all-reduce of |θ| floats, distribute.py)."""
    with tf.GradientTape() as tape:
        tape.watch(params)
        meta_loss = clean_loss(model, params, clean_batch, include_regularization, loss_fn,
                               loss_scale)
    return distribute.replica_mean(
        tape.gradient(meta_loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO))


def tangent_direction(clean_grads, loss_scale):
    """The clean gradient (of the loss times `loss_scale`, if given) as the direction of a
    forward-mode product: divided by the scale, in float32. The tangents the forward pass then
    carries in half precision have the magnitudes of an unscaled pass; S times larger, they
    would overflow float16 (the backward pass, not this one, needs the scale against underflow).
    """
    if loss_scale is None:
        return clean_grads
    return [g / tf.cast(loss_scale, g.dtype) for g in clean_grads]


def after(tensors, x):
    """`x`, available only once `tensors` are computed. Without it, graph execution may run the
    noisy pass side by side with the clean one (they are independent until they meet) and hold
    both passes' activations at once. `x` may be a nest (a model of several inputs)."""
    with tf.control_dependencies(tf.nest.flatten(tensors)):
        return tf.nest.map_structure(tf.identity, x)


def jvp_alignment(model, noisy_batch, clean_batch, include_regularization=False,
                  loss_fn=per_example_loss, loss_scale=None):
    """⟨∇θ C_i, ∇θ l_g⟩ for every i at once: the JVP of the loss vector along the clean gradient.
    Equal to −∂l_g/∂ε_i at ε = 0 with α = 1 (the look-ahead's step size). With a loss scale,
    the clean gradient is that of the scaled clean loss, unscaled (`tangent_direction`)."""
    x, y, sample_weight = unpack(noisy_batch)
    params = current_params(model)
    direction = tangent_direction(clean_gradient(
        model, params, clean_batch, include_regularization, loss_fn, loss_scale), loss_scale)
    x = after(direction, x)
    with tf.autodiff.ForwardAccumulator(params, direction) as acc:
        losses = scaled(loss_fn(y, forward(model, params, x)), sample_weight)
    return acc.jvp(losses, unconnected_gradients=tf.UnconnectedGradients.ZERO)


PARAMETER_LAYERS = (keras.layers.Dense, keras.layers.Conv2D)


def examples_are_independent(model):
    """True when an example's loss does not depend on the rest of its batch: no BatchNorm (or
    other state) and no dropout. Then a step on a subset equals the step on the whole batch with
    zero weight outside the subset, and one backward pass of Σ_i C_i holds every example's own
    gradient signal."""
    return not model.non_trainable_variables and not any(
        isinstance(layer, keras.layers.Dropout) for layer in model._flatten_layers())  # noqa: SLF001


def layerwise_layers(model):
    """The layers of `model` in order, if `layerwise` applies to it; otherwise a ValueError saying
    why. It needs each layer to feed the next (a chain), weights only in Dense / Conv2D layers
    (2-D inputs for Dense), and no BatchNorm or dropout (they couple or perturb examples)."""
    chain = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    why = None
    if not examples_are_independent(model):
        why = "it has non-trainable state (BatchNorm) or dropout"
    elif any(layer.trainable_weights and not isinstance(layer, PARAMETER_LAYERS)
             for layer in chain):
        why = "it has weights outside Dense / Conv2D layers"
    elif any(isinstance(layer, keras.layers.Dense) and len(layer.input.shape) != 2
             for layer in chain):
        why = "a Dense layer has inputs of rank other than 2"
    elif not (chain and len(model.inputs) == 1 and chain[0].input is model.inputs[0]
              and all(b.input is a.output for a, b in zip(chain, chain[1:]))
              and chain[-1].output is model.outputs[0]):
        why = "its layers are not a single chain"
    if why:
        raise ValueError(why)
    return chain


def _regularization_gradients(model, loss_scale=None):
    """(Σ model.losses, {id(variable): its gradient, times `loss_scale` if given}), or (None, {})
    for a model without regularisation losses."""
    if not model.losses:
        return None, {}
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        regularization = tf.add_n(model.losses)
        scaled_regularization = times_loss_scale(regularization, loss_scale)
    grads = tape.gradient(scaled_regularization, variables)
    return regularization, {id(v): g for v, g in zip(variables, grads) if g is not None}


def _layerwise_pass(model, noisy_batch, clean_batch, regularization_grads,
                    loss_fn=per_example_loss, loss_scale=None):
    """The noisy and the clean batch in one forward and one backward pass, layer by layer.

    Examples are independent, so the gradient of Σ_i C_i (noisy) + mean_j C_j (clean) holds every
    example's own output gradient δ at every layer; one pass over n + m examples also runs faster
    than two over n and m. Each layer's clean gradient is contracted from the clean rows, then
    ⟨∇θ C_i, ∇θ l_g⟩ = Σ_layers ⟨δ_i, a_i ∗ V + v_b⟩ from the noisy rows.
    `regularization_grads` ({id(variable): gradient}, empty for none) is added to the clean
    gradient (scaled as the objective: by `loss_scale`, if given, which scales every δ).
    Returns the noisy per-example losses, their alignments and, per parameter layer,
    (layer, noisy input a, noisy output gradient δ) for the weighted gradient, and the noisy
    rows' outputs."""
    chain = layerwise_layers(model)  # a clear ValueError for the models it does not apply to
    (x, y, sample_weight), (clean_x, clean_y) = unpack(noisy_batch), clean_batch[:2]
    n = tf.shape(y)[0]
    records = []  # (layer, input, pre-activation output), noisy rows first
    with tf.GradientTape() as tape:
        h = tf.concat([x, tf.cast(clean_x, x.dtype)], axis=0)
        for layer in chain:
            if not isinstance(layer, PARAMETER_LAYERS):
                h = layer(h, training=True)
                continue
            h = tf.cast(h, layer.compute_dtype)  # as the layer's own call would (e.g. float64)
            z = _linear(layer, h, layer.kernel.value, layer.bias.value if layer.use_bias else None)
            tape.watch(z)
            records.append((layer, h, z))
            h = layer.activation(z)
        losses = loss_fn(tf.concat([y, tf.cast(clean_y, y.dtype)], axis=0), h)
        noisy_losses = scaled(losses[:n], sample_weight)
        objective = times_loss_scale(tf.reduce_sum(noisy_losses) + tf.reduce_mean(losses[n:]),
                                     loss_scale)
    deltas = tape.gradient(objective, [z for _, _, z in records])
    direction = {}  # id(variable) -> its part of ∇θ l_g
    for (layer, a, _), delta in zip(records, deltas):
        direction.update(_layer_gradient(layer, a[n:], delta[n:]))
    for key, grad in regularization_grads.items():
        direction[key] += grad
    # Under a strategy: the global clean batch's gradient, the mean of the replicas'.
    direction = dict(zip(direction, distribute.replica_mean(list(direction.values()))))
    # The alignments in at least float32: each sums many products, which half precision (a
    # mixed policy's compute dtype) would round (bfloat16) or overflow (float16).
    alignment = at_least_float32(tf.zeros_like(noisy_losses))
    noisy_layers = []
    for (layer, a, _), delta in zip(records, deltas):
        a, delta = a[:n], delta[:n]
        along = _linear(layer, tf.cast(a, alignment.dtype), direction[id(layer.kernel)],
                        direction[id(layer.bias)] if layer.use_bias else None)
        alignment += tf.reduce_sum(
            tf.reshape(along * tf.cast(delta, alignment.dtype), [n, -1]), axis=1)
        noisy_layers.append((layer, a, delta))
    return noisy_losses, alignment, noisy_layers, h[:n]


def _linear(layer, inputs, kernel, bias):
    """A Dense / Conv2D layer's output before its activation, with the given kernel and bias, in
    the dtype of `inputs` (under a mixed policy the float32 kernel and bias are cast to the
    layer's compute dtype, as the layer's own call does)."""
    kernel = tf.cast(kernel, inputs.dtype)
    bias = None if bias is None else tf.cast(bias, inputs.dtype)
    if isinstance(layer, keras.layers.Dense):
        z = tf.matmul(inputs, kernel)
    else:
        z = layer.convolution_op(inputs, kernel)
    return z if bias is None else z + bias


def _layer_gradient(layer, inputs, output_gradients):
    """{id(variable): gradient} of a Dense / Conv2D layer's kernel and bias, given its inputs and
    the gradients of its (pre-activation) outputs. The gradients are in the variables' dtype
    (float32 under a mixed policy, whose layers compute in half precision)."""
    kernel = layer.kernel.value
    with tf.GradientTape() as tape:  # only the kernel's gradient op is kept in the graph
        tape.watch(kernel)
        z = _linear(layer, inputs, kernel, None)
    grads = {id(layer.kernel): tape.gradient(z, kernel, output_gradients=output_gradients)}
    if layer.use_bias:
        channels = output_gradients.shape[-1]
        grads[id(layer.bias)] = tf.reduce_sum(
            tf.cast(tf.reshape(output_gradients, [-1, channels]), layer.bias.dtype), axis=0)
    return grads


def layerwise_alignment(model, noisy_batch, clean_batch, include_regularization=False,
                        loss_fn=per_example_loss, loss_scale=None):
    """⟨∇θ C_i, ∇θ l_g⟩ for every i, layer by layer (the `layerwise` method); equals
    `jvp_alignment` on the models it applies to."""
    regularization_grads = (_regularization_gradients(model, loss_scale)[1]
                            if include_regularization else {})
    return _layerwise_pass(model, noisy_batch, clean_batch, regularization_grads, loss_fn,
                           loss_scale)[1]


def layerwise_l2rw_gradients(model, noisy_batch, clean_batch, include_regularization=False,
                             loss_fn=per_example_loss, loss_scale=None, weighting="proportional"):
    """The whole L2RW step's gradient by the `layerwise` method (the fastest exact way on the
    models it applies to): one forward and one backward pass over the noisy and clean batches
    together, and the weighted gradient of each layer contracted from its inputs and its δ_i·w_i,
    over the examples of nonzero weight only (L2RW sets many to zero; they add nothing). Returns
    a `StepGradients` (no non-trainable state: the models it applies to have none)."""
    # The regularisation gradient serves the clean meta loss (if asked) and the real step.
    regularization, regularization_grads = _regularization_gradients(model, loss_scale)
    losses, alignment, layers, outputs = _layerwise_pass(
        model, noisy_batch, clean_batch, regularization_grads if include_regularization else {},
        loss_fn, loss_scale)
    weights = tf.stop_gradient(WEIGHTINGS[weighting](alignment))
    # Nonzero, not positive: a NaN weight (float16 overflowed in the meta pass) must reach the
    # gradients, so that a LossScaleOptimizer skips the step and lowers its scale.
    kept = tf.where(tf.not_equal(weights, 0.0))[:, 0]
    kept_weights = tf.gather(weights, kept)
    grads = {}
    for layer, a, delta in layers:
        scale = tf.reshape(tf.cast(kept_weights, delta.dtype),
                           [-1] + [1] * (len(delta.shape) - 1))
        grads.update(_layer_gradient(layer, tf.gather(a, kept), tf.gather(delta, kept) * scale))
    # Under a strategy each replica adds 1/R of the regularisation: the optimizer sums the
    # replicas' gradients (distribute.replica_share).
    for key, grad in regularization_grads.items():
        grads[key] += distribute.replica_share(grad)
    grads = [grads[id(v)] for v in model.trainable_variables]
    loss = tf.reduce_sum(weights * losses)
    if regularization is not None:
        loss += distribute.replica_share(regularization)
    return StepGradients(grads, weights, losses, loss, outputs=outputs)


def example_weights(model, noisy_batch, clean_batch, meta_grad="jvp",
                    include_regularization=False, loss_fn=per_example_loss, loss_scale=None,
                    weighting="proportional"):
    """The L2RW weights of the noisy batch: a constant vector (stop-gradient) summing to 1 or 0.

    model: a built Keras model (outputs as `loss_fn` takes them; default: logits).
    noisy_batch: (inputs, labels) or (inputs, labels, sample_weight); clean_batch: (inputs, labels).
    meta_grad: "jvp" (forward-mode identity), "lookahead" (Algorithm 1's nested tapes) or
    "layerwise" (per-layer inner products; BN- and dropout-free chain models only).
    include_regularization: add `model.losses` (weight decay) to the clean meta loss.
    loss_fn(labels, outputs): the per-example loss C_i, a vector (default: cross-entropy).
    loss_scale: mixed_float16's loss scale S (None: none); the weights are the same.
    weighting: "proportional" (the paper's: w ∝ max(alignment, 0), `normalize_weights`) or
    "equal" (the same weight on every example of positive alignment, `equal_weights`).
    """
    if meta_grad not in ALIGNMENTS:
        raise ValueError(f"unknown meta_grad {meta_grad!r}: choose one of {META_GRADIENTS}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}: choose one of {tuple(WEIGHTINGS)}")
    alignment = ALIGNMENTS[meta_grad](model, noisy_batch, clean_batch, include_regularization,
                                      loss_fn=loss_fn, loss_scale=loss_scale)
    return tf.stop_gradient(WEIGHTINGS[weighting](alignment))


def fused_lookahead_gradients(model, noisy_batch, clean_batch, include_regularization=False,
                              step_size=1.0, loss_fn=per_example_loss, loss_scale=None,
                              weighting="proportional"):
    """Algorithm 1 and the weighted step from one noisy forward pass: the look-ahead's inner tape
    (kept) is differentiated a second time, with the weights, for the real step (instead of a
    second forward pass). Returns a `StepGradients`, like `fused_l2rw_gradients`."""
    alignment, inner, params, losses, regularization, new_non_trainable, outputs = _lookahead(
        model, noisy_batch, clean_batch, include_regularization, step_size, keep_tape=True,
        loss_fn=loss_fn, loss_scale=loss_scale)
    weights = tf.stop_gradient(WEIGHTINGS[weighting](alignment))
    # ∇θ(Σ w_i C_i + regularisation) through the recorded pass: output gradients (w, 1). Sparse
    # gradients stay IndexedSlices, as the tape (and `fused_l2rw_gradients`) returns them.
    # (Output gradients times the loss scale: the gradients of the scaled objective.)
    targets, output_gradients = [losses], [times_loss_scale(weights, loss_scale)]
    loss = tf.reduce_sum(weights * losses)
    if regularization is not None:  # 1/R of it per replica under a strategy (replica_share)
        targets.append(regularization)
        output_gradients.append(times_loss_scale(
            distribute.replica_share(tf.ones_like(regularization)), loss_scale))
        loss += distribute.replica_share(regularization)
    grads = inner.gradient(targets, params, output_gradients=output_gradients,
                           unconnected_gradients=tf.UnconnectedGradients.ZERO)
    del inner
    return StepGradients(grads, weights, losses, loss, new_non_trainable, outputs)


def fused_l2rw_gradients(model, noisy_batch, clean_batch, include_regularization=False,
                         loss_fn=per_example_loss, loss_scale=None, weighting="proportional"):
    """The whole L2RW step's gradient with one noisy forward pass (the fast path).

    The training-mode forward pass of the real step is run under a `ForwardAccumulator` along the
    clean gradient, so the same pass yields the per-example alignments (the `jvp` identity) and,
    once the weights are fixed, the weighted loss to differentiate. The result equals
    `example_weights(..., "jvp")` followed by a separate weighted step: BatchNorm sees the same
    batch statistics and dropout the same masks (Keras draws them from the seed state the real
    pass would use; the clean pass draws its own, `meta_pass_state`).

    Returns a `StepGradients`; the caller applies the gradients and assigns the non-trainable
    values (BN moving statistics, dropout seed state).
    """
    x, y, sample_weight = unpack(noisy_batch)
    params = current_params(model)
    direction = tangent_direction(clean_gradient(
        model, params, clean_batch, include_regularization, loss_fn, loss_scale), loss_scale)
    x = after(direction, x)
    with tf.GradientTape() as tape:
        tape.watch(params)
        with tf.autodiff.ForwardAccumulator(params, direction) as acc:
            logits, new_non_trainable, reg_losses = model.stateless_call(
                params, meta_pass_state(model), x, training=True, return_losses=True)
            losses = scaled(loss_fn(y, logits), sample_weight)
        weights = tf.stop_gradient(WEIGHTINGS[weighting](
            acc.jvp(losses, unconnected_gradients=tf.UnconnectedGradients.ZERO)))
        loss = tf.reduce_sum(weights * losses)
        if reg_losses:  # 1/R of it per replica under a strategy (distribute.replica_share)
            loss += distribute.replica_share(tf.add_n(reg_losses))
        scaled_loss = times_loss_scale(loss, loss_scale)
    grads = tape.gradient(scaled_loss, params,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return StepGradients(grads, weights, losses, loss, new_non_trainable, logits)


# The alignments −∂l_g/∂ε_i of each method, and the whole step fused with them, by name.
ALIGNMENTS = {"jvp": jvp_alignment, "lookahead": lookahead_alignment,
              "layerwise": layerwise_alignment}
FUSED_STEPS = {"jvp": fused_l2rw_gradients, "lookahead": fused_lookahead_gradients,
               "layerwise": layerwise_l2rw_gradients}
