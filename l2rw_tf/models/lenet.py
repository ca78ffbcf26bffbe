"""The LeNet variant of the original MNIST code (reference §2).

conv5x5(16) -> maxpool3x3/2 -> ReLU -> conv5x5(32) -> pool -> ReLU -> conv5x5(64) -> pool -> ReLU
-> dense(100) -> ReLU -> dense(num_outputs). SAME padding throughout; the max-pool comes *before*
the ReLU, as in the original. Weights truncated normal (std 0.1), biases zero; no BN, dropout or
weight decay. With one output the logit is the binary (sigmoid) logit of class 1.
"""
import keras
from keras import layers


def lenet(num_outputs=1, input_shape=(28, 28, 1), seed=None):
    def init(offset):
        # A distinct seed per layer keeps models built with the same seed identical.
        return keras.initializers.TruncatedNormal(
            stddev=0.1, seed=None if seed is None else seed + offset)

    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 5, padding="same", kernel_initializer=init(i),
                          name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(100, activation="relu", kernel_initializer=init(3), name="fc4")(x)
    outputs = layers.Dense(num_outputs, kernel_initializer=init(4), name="fc5")(x)
    return keras.Model(inputs, outputs, name="lenet")
