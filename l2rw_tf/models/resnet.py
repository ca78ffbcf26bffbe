"""The pre-activation ResNets of the original CIFAR code (reference §3, "Models").

    init:  conv3x3(init_filters) -> BN -> ReLU
    3 stages (strides 1/2/2) of residual units, unit k of stage s mapping c_in -> c_out:
        sub1: [BN -> ReLU -> dropout] -> conv3x3(c_in -> c_out, stride)
        sub2:  BN -> ReLU -> conv3x3(c_out -> c_out)
        out = sub2 + shortcut(unit input)
    head:  BN -> ReLU -> global average pool -> dense(num_classes)

As in the original module:
* The very first unit of the network has no leading BN/ReLU (nor dropout): it follows the init
  conv's BN/ReLU. Every other unit starts with BN -> ReLU, then dropout (WRN only), then conv1.
* The shortcut takes the unit's *input* (the residual stream before the unit's BN/ReLU), not
  its activation: average pooling (kernel = stride = the unit's stride, SAME) when the stride is
  > 1, then zero-padding of the channels, split equally on both sides, when the width grows.
  There is no 1x1 projection: the shortcut has no parameters.
* The init conv has 16 filters for both ResNet-32 and WRN-28-10 (the configs' num_filters lists
  are 16,16,32,64 and 16,160,320,640); the first unit of stage 1 of WRN maps 16 -> 160.
* Each BN normalises its own input, so bn1 of a stage's first unit has c_in channels.
* BN as tf.contrib.layers.batch_norm's defaults: decay (Keras momentum) 0.999, epsilon 1e-3,
  beta only (center=True, scale=False).
* Convs have no bias, kernel ~ truncated normal (2 std) with std sqrt(2 / (k*k*c_out)). The
  dense kernel is uniform in +-sqrt(3 / fan_in) (uniform_unit_scaling, factor 1), bias zero.
* Weight decay wd*sum(w^2) on conv kernels and the dense kernel only (the original's
  2e-4 * tf.nn.l2_loss(w) = 1e-4 * sum(w^2)); Keras L2(wd) computes exactly wd*sum(w^2).

Trainable parameters on CIFAR-10: ResNet-32 463,018; WRN-28-10 36,211,658.
"""
import math

import keras
from keras import layers

BN_MOMENTUM = 0.999
BN_EPSILON = 1e-3


@keras.saving.register_keras_serializable(package="l2rw_tf")
class ChannelPad(layers.Layer):
    """Zero-pads the channel (last) axis with `before` and `after` channels."""

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        self.before = int(before)
        self.after = int(after)

    def call(self, x):
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.before, self.after]])

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        if channels is not None:
            channels += self.before + self.after
        return tuple(input_shape[:-1]) + (channels,)

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


def resnet(num_classes, depth_units=(5, 5, 5), filters=(16, 32, 64), dropout=0.0,
           weight_decay=1e-4, input_shape=(32, 32, 3), seed=None, name="resnet",
           init_filters=16, strides=(1, 2, 2), bn_momentum=BN_MOMENTUM,
           sync_batch_norm=False):
    """Builds a pre-activation ResNet (functional `keras.Model` returning logits).

    depth_units: residual units per stage. filters: output channels per stage.
    dropout: rate before conv1 of every unit but the first (0 disables it).
    weight_decay: L2 coefficient (wd * sum(w^2)) on conv and dense kernels; 0/None disables it.
    seed: int for a deterministic init (each layer gets its own derived seed), or None.
    init_filters: channels of the init conv (16 in both original configs).
    bn_momentum: decay of the BN moving statistics (the original's 0.999). Evaluation uses
      them, and from their initial (0, 1) they need ~3/(1 - momentum) steps to settle: runs much
      shorter than 3,000 steps need a lower value.
    sync_batch_norm: BatchNormalization(synchronized=True): under a tf.distribute strategy the
      batch statistics are the global batch's (all-reduced), as on one device; without it each
      replica normalises its part with its own statistics (Keras' default). The same layer on
      one device.
    """
    if len(depth_units) != len(filters) or len(filters) != len(strides):
        raise ValueError("depth_units, filters and strides need one entry per stage")
    widths = (init_filters,) + tuple(filters)
    if any(b < a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"channel counts must not decrease (zero-pad shortcut): {widths}")

    offsets = iter(range(1_000_000))

    def next_seed():
        offset = next(offsets)
        return None if seed is None else seed + offset

    regularizer = (lambda: keras.regularizers.L2(weight_decay)) if weight_decay else (lambda: None)

    def conv(x, out_channels, stride, layer_name):
        std = math.sqrt(2.0 / (3 * 3 * out_channels))
        return layers.Conv2D(
            out_channels, 3, strides=stride, padding="same", use_bias=False,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=std, seed=next_seed()),
            kernel_regularizer=regularizer(), name=layer_name)(x)

    def bn_relu(x, layer_name):
        x = layers.BatchNormalization(momentum=bn_momentum, epsilon=BN_EPSILON, center=True,
                                      scale=False, synchronized=sync_batch_norm,
                                      name=layer_name)(x)
        return layers.ReLU()(x)

    def shortcut(x, in_channels, out_channels, stride, prefix):
        if stride > 1:
            x = layers.AveragePooling2D(stride, strides=stride, padding="same",
                                        name=f"{prefix}_downsample")(x)
        if in_channels < out_channels:
            extra = out_channels - in_channels
            x = ChannelPad(extra // 2, extra - extra // 2, name=f"{prefix}_pad")(x)
        return x

    inputs = keras.Input(input_shape)
    h = conv(inputs, init_filters, 1, "init_conv")
    h = bn_relu(h, "init_bn")

    in_channels = init_filters
    for stage, (units, out_channels, stage_stride) in enumerate(zip(depth_units, filters,
                                                                    strides)):
        for unit in range(units):
            prefix = f"unit_{stage + 1}_{unit}"
            stride = stage_stride if unit == 0 else 1
            first_of_network = stage == 0 and unit == 0
            x = h
            if not first_of_network:
                x = bn_relu(x, f"{prefix}_bn1")
                if dropout and dropout > 0.0:
                    x = layers.Dropout(dropout, seed=next_seed(), name=f"{prefix}_dropout")(x)
            x = conv(x, out_channels, stride, f"{prefix}_conv1")
            x = bn_relu(x, f"{prefix}_bn2")
            x = conv(x, out_channels, 1, f"{prefix}_conv2")
            h = layers.Add(name=f"{prefix}_add")(
                [x, shortcut(h, in_channels, out_channels, stride, prefix)])
            in_channels = out_channels

    h = bn_relu(h, "final_bn")
    h = layers.GlobalAveragePooling2D()(h)
    outputs = layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.VarianceScaling(
            scale=1.0, mode="fan_in", distribution="uniform", seed=next_seed()),
        bias_initializer="zeros", kernel_regularizer=regularizer(), name="logit")(h)
    return keras.Model(inputs, outputs, name=name)


def resnet32(num_classes, **kw):
    """ResNet-32: 5 units per stage, filters 16/32/64, no dropout (463,018 params, CIFAR-10)."""
    kw.setdefault("name", "resnet32")
    return resnet(num_classes, depth_units=(5, 5, 5), filters=(16, 32, 64), **kw)


def wrn28_10(num_classes, **kw):
    """WRN-28-10: 4 units per stage, filters 160/320/640, dropout 0.3 (36,211,658 params)."""
    kw.setdefault("name", "wrn28_10")
    kw.setdefault("dropout", 0.3)
    return resnet(num_classes, depth_units=(4, 4, 4), filters=(160, 320, 640), **kw)


def resnet_small(num_classes, units=5, width=1.0, **kw):
    """CPU-scale variant: `units` per stage, stage filters round(width * 16/32/64).

    The init conv keeps 16 filters like both original configs (so width=10, units=4 is
    WRN-28-10's shape), capped at the first stage's width so the zero-pad shortcut still works
    when width < 1. Defaults give ResNet-32.
    """
    filters = tuple(max(1, int(round(width * f))) for f in (16, 32, 64))
    kw.setdefault("name", f"resnet_u{units}_w{width:g}".replace(".", "p"))
    kw.setdefault("init_filters", min(16, filters[0]))
    return resnet(num_classes, depth_units=(units,) * 3, filters=filters, **kw)
