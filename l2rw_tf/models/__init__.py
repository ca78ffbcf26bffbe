"""Model builders, by name: `build_model(name, num_classes, ...)`."""
from l2rw_tf.models.lenet import lenet
from l2rw_tf.models.mlp import mlp
from l2rw_tf.models.resnet import resnet, resnet32, resnet_small, wrn28_10

from l2rw_tf.choices import MODELS  # noqa: F401  (the names build_model knows)

# Keyword arguments the ResNet builders accept from `build_model`.
_RESNET_KWARGS = ("weight_decay", "dropout", "bn_momentum", "sync_batch_norm")


def build_model(name, num_classes, input_shape, seed=None, **kwargs):
    """Builds a Keras model by name. Binary tasks (num_classes == 2) get a single sigmoid logit.

    "lenet": the MNIST LeNet. "mlp": a two-hidden-layer Dense network (benchmarks). "resnet32" / "wrn28_10": the original CIFAR networks.
    "resnet": the CPU-scale reduced ResNet, kwargs `units` (per stage, default 5) and `width`
    (multiplies the 16/32/64 stage filters, default 1.0). The ResNets take `weight_decay`,
    `dropout`, `bn_momentum` and `sync_batch_norm` kwargs when given (None means the builder's
    default).
    """
    num_outputs = 1 if num_classes == 2 else num_classes
    if name == "lenet":
        return lenet(num_outputs, input_shape, seed=seed)
    if name == "mlp":
        return mlp(num_outputs, input_shape, seed=seed)
    resnet_kw = {k: kwargs[k] for k in _RESNET_KWARGS if kwargs.get(k) is not None}
    if name == "resnet32":
        return resnet32(num_outputs, input_shape=input_shape, seed=seed, **resnet_kw)
    if name == "wrn28_10":
        return wrn28_10(num_outputs, input_shape=input_shape, seed=seed, **resnet_kw)
    if name == "resnet":
        units = kwargs.get("units")
        width = kwargs.get("width")
        return resnet_small(num_outputs, units=5 if units is None else int(units),
                            width=1.0 if width is None else float(width),
                            input_shape=input_shape, seed=seed, **resnet_kw)
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
