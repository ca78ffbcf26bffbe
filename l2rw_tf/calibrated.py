"""Calibrated weights: drop only as many examples as the noise can explain.

Why. L2RW's weights clip at zero every example whose gradient disagrees with the clean
gradient. On clean labels that still drops a fifth to a quarter of every batch: the hard but
correct examples, which a small clean set cannot vouch for (examples/mnist_cnn.py, 0% noise:
78% kept, the same examples step after step, and 1.0-1.3 points below plain training on every
seed; results/clean_labels/README.md). A clean set of m examples cannot tell a hard correct
example from a mislabelled one; it can tell how often a *correct* example disagrees with it.

How. The clean batch is split in two halves A and B, with gradients v_A and v_B.
* Null: each half's examples against the other half's gradient, ⟨∇C_j, v_B⟩ for j in A and
  ⟨∇C_j, v_A⟩ for j in B: correct examples that the direction was not computed from, as the
  noisy examples are not. r_null, the fraction of them below zero, is how often a correct
  example disagrees.
* The noisy batch against both halves: r, the fraction of ⟨∇C_i, v_A⟩ and ⟨∇C_i, v_B⟩ below
  zero. The alignment is their mean, ⟨∇C_i, (v_A + v_B)/2⟩: the clean gradient's, as without
  calibration (alignments are linear in the direction).
* The harmful fraction of the batch, estimated: π̂ = (r − r_null) / (1 − r_null), in [0, 1]
  (if a fraction π of the batch always disagrees and the rest disagree as often as correct
  examples, r = π + (1 − π)·r_null).
* The round(π̂·n) examples of lowest alignment, of those below zero, get weight 0; every other
  example the same weight (as `reweight.equal_weights`). On clean labels π̂ ≈ 0 and the step is
  plain training's; under noise it drops the most disagreeing examples, as many as the excess.

Each of the four products is an alignment by the model's meta-gradient (`reweight.ALIGNMENTS`:
jvp, lookahead or layerwise), so it runs wherever that does. Cost: the noisy batch's meta pass
twice (against v_A, v_B) and the clean batch's once more (the null), without the fused step.
Under a tf.distribute strategy the counts and the drop threshold are the global batch's (an
all-reduce of three floats, an all-gather of the alignments).
"""
import keras
import tensorflow as tf

from l2rw_tf import distribute, reweight


def halves(clean_batch):
    """The clean batch's first and second halves (the first has ⌊m/2⌋ examples), nests alike."""
    size = tf.shape(tf.nest.flatten(clean_batch[1])[0])[0] // 2
    return (tf.nest.map_structure(lambda t: t[:size], tuple(clean_batch[:2])),
            tf.nest.map_structure(lambda t: t[size:], tuple(clean_batch[:2])))


def weights_from_alignments(against_first, against_second, null):
    """The calibrated weights (module docstring) from the noisy batch's alignments against each
    half's gradient (two [n] vectors) and the null alignments ([m]). In keras.ops; under a
    strategy, the global batch's. A non-finite alignment makes every weight NaN (as
    `reweight.equal_weights`), so that a LossScaleOptimizer skips the step."""
    ops = keras.ops
    first = reweight.at_least_float32(against_first)
    second = reweight.at_least_float32(against_second)
    null = reweight.at_least_float32(null)
    alignment = (first + second) / 2.0
    counts = ops.stack([
        ops.sum(ops.cast(first < 0, "float32")) + ops.sum(ops.cast(second < 0, "float32")),
        2.0 * ops.cast(ops.shape(alignment)[0], "float32"),
        ops.sum(ops.cast(null < 0, "float32")),
        ops.cast(ops.shape(null)[0], "float32"),
        ops.sum(ops.cast(ops.logical_not(ops.isfinite(ops.concatenate([alignment, null]))),
                         "float32"))])
    negative, total, null_negative, null_total, non_finite = ops.unstack(
        distribute.replica_sum(counts))
    r, r_null = negative / total, null_negative / ops.maximum(null_total, 1.0)
    harmful = ops.clip((r - r_null) / ops.maximum(1.0 - r_null, 1e-6), 0.0, 1.0)
    everything = distribute.replica_gather(alignment)
    drop = ops.cast(ops.round(harmful * ops.cast(ops.shape(everything)[0], "float32")), "int32")
    # The drop-th lowest alignment of the global batch (−∞ when none is dropped).
    ordered = ops.sort(ops.where(ops.isfinite(everything), everything, 0.0))
    threshold = ops.where(drop > 0, ops.take(ordered, ops.maximum(drop - 1, 0)),
                          float("-inf"))
    kept = ops.cast(ops.logical_not(ops.logical_and(alignment <= threshold, alignment < 0)),
                    "float32")
    count = distribute.replica_sum(ops.sum(kept))
    weights = kept / ops.maximum(count, 1.0)
    return ops.where(non_finite > 0, ops.full_like(weights, float("nan")), weights)


def example_weights(model, noisy_batch, clean_batch, meta_grad="jvp",
                    include_regularization=False, loss_fn=reweight.per_example_loss,
                    loss_scale=None):
    """The calibrated weights of the noisy batch (a constant vector summing to 1): the
    arguments as `reweight.example_weights`'. The clean batch needs at least 2 examples."""
    align = reweight.ALIGNMENTS[meta_grad]
    first, second = halves(clean_batch)

    def alignment(batch, against):
        return align(model, batch, against, include_regularization, loss_fn=loss_fn,
                     loss_scale=loss_scale)

    null = tf.concat([alignment(first, second), alignment(second, first)], axis=0)
    return tf.stop_gradient(weights_from_alignments(
        alignment(noisy_batch, first), alignment(noisy_batch, second), null))
