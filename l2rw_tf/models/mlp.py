"""A Dense MLP (flatten -> hidden ReLU layers -> logits): the benchmark's fully-connected case."""
import keras
from keras import layers


def mlp(num_outputs, input_shape=(28, 28, 1), hidden=(256, 256), seed=None):
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    for i, units in enumerate(hidden):
        x = layers.Dense(units, activation="relu", name=f"fc{i + 1}",
                         kernel_initializer=keras.initializers.GlorotUniform(
                             seed=None if seed is None else seed + i))(x)
    outputs = layers.Dense(num_outputs, name="logits", kernel_initializer=(
        keras.initializers.GlorotUniform(seed=None if seed is None else seed + len(hidden))))(x)
    return keras.Model(inputs, outputs, name="mlp")
