"""One training step of every method: its gradients, example weights and losses.

The only module that knows the methods. Both drivers take their step from `step_gradients`:
train.py's resumable loop (the command line) and `fit.L2RWModel.train_step` (Keras `fit`), so
the two cannot drift apart. A batch is an (inputs, labels) pair; `loss_fn(labels, outputs)` gives
the per-example losses C_i (default: cross-entropy, `reweight.per_example_loss`); a noisy batch
may carry per-example sample weights as a third element (x, y, s), which scale its C_i. The step's
forward pass is a training-mode one, so it updates BatchNorm moving statistics; the caller
applies the gradients. `loss_scale` (mixed_float16's dynamic loss scale, precision.py; None: none)
multiplies everything the step differentiates, so the gradients come out scaled by it for the
LossScaleOptimizer to divide; weights and losses come out as without it.

Under a tf.distribute strategy the same step runs on every replica, on its part of the global
batch (distribute.py): the weights are the global batch's, and the gradients each replica returns
sum, in the optimizer's all-reduce, to the one-device gradient (1/R of the regularisation each).
The loss a replica returns is its part of the global loss (their sum).

Methods (`STEPS`, whose keys are the CLI's `--method` choices):
* `l2rw`: the example weights of Algorithm 1 (reweight.py), fused with the weighted step.
* `baseline`, `resample`, `clean_only`, `finetune`: uniform weights (their data differs).
* `random`: w̃ = max(N(0, 1), 0), normalised; `ratio`: the original's proportion weighting;
  `weighted`: the BackgroundFlip class down-weighted; `hard_mining`: hard positive mining.
"""
import contextlib
import dataclasses

import numpy as np
import tensorflow as tf

from l2rw_tf import calibrated, choices, distribute, reweight
from l2rw_tf.reweight import StepGradients, per_example_loss


@dataclasses.dataclass(frozen=True)
class StepConfig:
    method: str = "l2rw"
    meta_grad: str = "jvp"
    clean_weight_decay: bool = True  # regularisation losses in the clean meta loss
    pos_ratio: float = 0.995         # for `ratio`
    seed: int = 0
    background_class: int = -1       # for `weighted`: the BackgroundFlip class ...
    background_weight: float = 1.0   # ... and its weight before normalisation
    fused: bool = True               # l2rw: one noisy forward pass for weights and step
    # l2rw: dropout (and other noise layers) active in the meta passes, as the paper and the
    # original code; False: the weights from the meta passes without it, the step with it
    # (L2RWModel's default, results/stability/README.md).
    meta_dropout: bool = True
    # l2rw: how the alignments become weights: "proportional", the paper's, or "equal" on every
    # example of positive alignment (reweight.WEIGHTINGS), or "calibrated": equal weights, but
    # only as many examples dropped as the noise explains (calibrated.py).
    weighting: str = "proportional"


def l2rw_step(model, config, noisy, clean, rng, loss_fn, loss_scale=None):
    """The L2RW step: fused, one noisy forward pass gives the weights and the weighted step;
    unfused (benchmarks, and the calibrated weights), `example_weights` and then the weighted
    step. Without
    `meta_dropout`, on a model with dropout: the weights from meta passes without dropout
    (`reweight.noise_off`), then the weighted step's own forward pass, with its dropout; on a
    model without, the same as with it."""
    if config.weighting == "calibrated" or not config.fused or (
            not config.meta_dropout and reweight.noise_layers(model)):
        meta_passes = (reweight.noise_off(model) if not config.meta_dropout
                       else contextlib.nullcontext())
        with meta_passes:
            weights = example_weights(model, config, noisy, clean, loss_fn, loss_scale)
        return weighted_step(model, weights, noisy, loss_fn, loss_scale)
    result = reweight.FUSED_STEPS[config.meta_grad](model, noisy, clean,
                                                    config.clean_weight_decay, loss_fn=loss_fn,
                                                    loss_scale=loss_scale,
                                                    weighting=config.weighting)
    if result.non_trainable is not None:  # BN moving statistics, dropout seed states
        for variable, value in zip(model.non_trainable_variables, result.non_trainable):
            variable.assign(value)
    return result


def example_weights(model, config, noisy, clean, loss_fn=per_example_loss, loss_scale=None):
    """The L2RW weights of the noisy batch by `config.weighting`: calibrated.py's, or
    reweight.py's from the clipped alignments."""
    if config.weighting == "calibrated":
        return calibrated.example_weights(model, noisy, clean, config.meta_grad,
                                          config.clean_weight_decay, loss_fn, loss_scale)
    return reweight.example_weights(model, noisy, clean, config.meta_grad,
                                    config.clean_weight_decay, loss_fn, loss_scale,
                                    config.weighting)


def weighted_step(model, weights, noisy, loss_fn=per_example_loss, loss_scale=None):
    """∇θ (Σ_i w_i C_i + regularisation) for given weights, from a training-mode forward pass
    (times `loss_scale`, if given)."""
    weights = tf.stop_gradient(weights)
    x, y, sample_weight = reweight.unpack(noisy)
    # The forward pass starts once the weights exist: run side by side with the L2RW meta passes,
    # it would hold both passes' activations at once (twice the memory).
    x = reweight.after([weights], x)
    with tf.GradientTape() as tape:
        outputs = model(x, training=True)
        losses = reweight.scaled(loss_fn(y, outputs), sample_weight)
        loss = tf.reduce_sum(tf.cast(weights, losses.dtype) * losses)
        if model.losses:  # 1/R of it per replica under a strategy (distribute.replica_share)
            loss += distribute.replica_share(tf.add_n(model.losses))
        scaled_loss = reweight.times_loss_scale(loss, loss_scale)
    return StepGradients(tape.gradient(scaled_loss, model.trainable_variables), weights, losses,
                         loss, outputs=outputs)


def uniform_weights(labels):
    """1/N for each of the N examples of the global batch (under a strategy, R replicas of n)."""
    n = tf.shape(labels)[0] * distribute.num_replicas()
    return tf.fill([tf.shape(labels)[0]], 1.0 / tf.cast(n, tf.float32))


def uniform_step(model, config, noisy, clean, rng, loss_fn, loss_scale=None):
    return weighted_step(model, uniform_weights(noisy[1]), noisy, loss_fn,  # noqa: ARG001
                         loss_scale)


def random_step(model, config, noisy, clean, rng, loss_fn, loss_scale=None):
    """The paper's random-weight baseline: w̃ = max(N(0, 1), 0), normalised."""
    return weighted_step(model, reweight.normalize_weights(rng.normal([tf.shape(noisy[1])[0]])),
                         noisy, loss_fn, loss_scale)


def ratio_step(model, config, noisy, clean, rng, loss_fn, loss_scale=None):
    """The original's proportion weighting (not normalised): p for 4s (label 0), 1 − p for 9s."""
    y = tf.cast(noisy[1], tf.float32)
    return weighted_step(model, config.pos_ratio * (1.0 - y) + (1.0 - config.pos_ratio) * y,
                         noisy, loss_fn, loss_scale)


def background_step(model, config, noisy, clean, rng, loss_fn, loss_scale=None):
    """The original's "Weighted" BackgroundFlip baseline: examples labelled with the background
    class get its clean fraction as weight, the others 1, normalised to sum 1 over the batch.
    (The original takes the batch's most frequent label as the background class and writes 1/C
    as 0.1; we use the known class and 1/C, the same on CIFAR-10.)"""
    is_background = tf.equal(tf.cast(noisy[1], tf.int64), config.background_class)
    raw = tf.where(is_background, tf.constant(config.background_weight, tf.float32), 1.0)
    return weighted_step(model, raw / distribute.replica_sum(tf.reduce_sum(raw)), noisy, loss_fn,
                         loss_scale)


def hard_mining_weights(model, labels, inputs, losses=None, loss_fn=per_example_loss):
    """Hard *positive* mining as the original intended (its version ranks a scalar mean loss):
    keep every minority (label 0) example plus the k majority examples with the largest loss,
    k = max(#minority, 1); uniform weights over the kept examples. `losses`: the per-example
    losses at the current parameters, if already computed."""
    if losses is None:
        losses = loss_fn(labels, reweight.forward(model, reweight.current_params(model), inputs))
    is_majority = tf.cast(tf.equal(labels, 1), tf.float32)
    k = tf.maximum(tf.cast(tf.reduce_sum(1.0 - is_majority), tf.int32), 1)
    k = tf.minimum(k, tf.cast(tf.reduce_sum(is_majority), tf.int32))
    # Minority examples rank below every majority example, so top_k picks majority only.
    ranked = tf.where(is_majority > 0, losses, -np.inf)
    _, hardest = tf.math.top_k(ranked, k)
    picked = tf.scatter_nd(hardest[:, None], tf.ones_like(hardest, tf.float32),
                           tf.shape(labels, out_type=tf.int32))
    mask = tf.maximum(1.0 - is_majority, picked)
    return mask / tf.reduce_sum(mask)


def hard_mining_step(model, config, noisy, clean, rng, loss_fn, loss_scale=None):
    """Hard mining. On models whose examples are independent, the step runs on its kept examples
    only: the pool is 5x the batch (500, as the original) but at most 2·#minority examples carry
    weight, so the backward pass and a second forward pass run on those alone; the pass that
    ranks the pool also gives its losses."""
    if distribute.num_replicas() > 1:
        raise ValueError("hard_mining ranks the whole pool at once: it runs on one device only")
    x, y = noisy[:2]  # a binary-task baseline of the original: sample weights do not apply
    if not reweight.examples_are_independent(model):
        return weighted_step(model, hard_mining_weights(model, y, x, loss_fn=loss_fn), noisy,
                             loss_fn, loss_scale)
    outputs = model(x, training=True)
    losses = loss_fn(y, outputs)
    weights = tf.stop_gradient(hard_mining_weights(model, y, x, losses))
    kept = tf.where(weights > 0.0)[:, 0]
    with tf.GradientTape() as tape:
        kept_losses = loss_fn(tf.gather(y, kept), model(tf.gather(x, kept), training=True))
        loss = tf.reduce_sum(tf.gather(weights, kept) * kept_losses)
        if model.losses:
            loss += tf.add_n(model.losses)
        scaled_loss = reweight.times_loss_scale(loss, loss_scale)
    return StepGradients(tape.gradient(scaled_loss, model.trainable_variables), weights, losses,
                         loss, outputs=outputs)


# Every method's step, by its CLI name; one signature: (model, config, noisy, clean, rng,
# loss_fn, loss_scale=None) -> StepGradients.
STEPS = {"l2rw": l2rw_step, "baseline": uniform_step, "resample": uniform_step,
         "clean_only": uniform_step, "finetune": uniform_step, "random": random_step,
         "ratio": ratio_step, "weighted": background_step, "hard_mining": hard_mining_step}
assert set(STEPS) == set(choices.METHODS)


def step_gradients(model, config, noisy, clean, rng=None, loss_fn=per_example_loss,
                   loss_scale=None):
    """One step of `config.method` on the noisy batch (x, y), with the clean batch (x, y) for
    L2RW and `rng` (a tf.random.Generator) for `random`: a `StepGradients`, its gradients times
    `loss_scale` if given. Runs inside the drivers' `tf.function`."""
    return STEPS[config.method](model, config, noisy, clean, rng, loss_fn, loss_scale)
