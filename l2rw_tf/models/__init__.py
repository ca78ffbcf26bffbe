"""Model builders, by name: `build_model(name, num_classes, ...)`."""
from l2rw_tf.models.lenet import lenet


def build_model(name, num_classes, input_shape, seed=None, **kwargs):
    """Builds a Keras model by name. Binary tasks (num_classes == 2) get a single sigmoid logit."""
    num_outputs = 1 if num_classes == 2 else num_classes
    if name == "lenet":
        return lenet(num_outputs, input_shape, seed=seed)
    raise ValueError(f"unknown model {name!r}: choose one of lenet")
