"""Mixed precision (`--mixed_precision`): Keras' global dtype policy and, under mixed_float16,
Keras' dynamic loss scaling (`keras.optimizers.LossScaleOptimizer`).

Under a mixed policy the layers compute in half precision (bfloat16 or float16) and the variables
stay float32. The losses, alignments and weights are computed in float32 (reweight.py). float16
has 5 exponent bits: small gradients underflow to zero, so the step multiplies every loss it
differentiates by the loss scale S (the noisy losses, the clean meta loss, the regularisation);
the weights do not change (every alignment gets the factor S², which the normalisation removes)
and the LossScaleOptimizer divides the gradients by S, or skips the step and halves S when a
gradient overflowed (as Keras' own `fit` does). bfloat16 has float32's exponent range: no scaling.
"""
import contextlib

import keras


@contextlib.contextmanager
def global_policy(name):
    """Keras' global dtype policy `name` ("float32", "mixed_bfloat16", "mixed_float16") for the
    models built within the block; the previous policy after it (tests, notebooks)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def with_loss_scaling(optimizer, policy):
    """`optimizer` in a `keras.optimizers.LossScaleOptimizer` under mixed_float16 (as Keras'
    `compile` wraps it), as it is under any other policy."""
    if policy == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def loss_scale(optimizer):
    """The factor a step multiplies its losses by before differentiating, as Keras' own
    `train_step` does (`optimizer.scale_loss`): the current dynamic scale of a (built)
    LossScaleOptimizer, an optimizer's static `loss_scale_factor`; None for no scaling."""
    if (isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
            or getattr(optimizer, "loss_scale_factor", None) is not None):
        return optimizer.scale_loss(1.0)
    return None


def inner_optimizer(optimizer):
    """The optimizer a LossScaleOptimizer wraps (its learning rate, its schedule), or `optimizer`."""
    return getattr(optimizer, "inner_optimizer", optimizer)
