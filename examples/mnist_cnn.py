"""Images: a small CNN with BatchNorm and dropout on MNIST with 40% noisy labels, L2RW vs plain.

Data: genuine MNIST from tensorflow_datasets, read offline from $TFDS_DATA_DIR (or --data_dir),
never downloaded: a directory without a prepared `mnist` is refused. The first --num_train
images of tfds' train split (stored in a shuffled order) are the training pool: 10 per class
(--clean_per_class) become the clean set L2RW trusts, and --ratio of the rest get corrupted
labels (--noise uniform: UniformFlip, each to another class; background: BackgroundFlip, all to
one class). The test set is MNIST's 10,000 test images, with their true labels.

Model: Conv(16)-BN-ReLU-MaxPool, Conv(32)-BN-ReLU-MaxPool, Dropout(0.3), Dense(64)-ReLU,
Dropout(0.3), Dense(10) logits. L2RWModel picks meta_grad="jvp" for it (BatchNorm and dropout).
Plain `model.fit` and `L2RWModel.fit` start from the same weights, with the same SGD, batch size
and epochs (examples/harness.py says exactly what is compared). Besides the table, it draws the
64 likeliest mislabelled training images (seed_<s>/suspects.png, `l2rw_tf.contact_sheet`).

    export TFDS_DATA_DIR=/path/to/tensorflow_datasets     # with a prepared mnist
    python examples/mnist_cnn.py                          # about 3 minutes on 2 CPU cores
    python examples/mnist_cnn.py --noise=background --out=runs/examples/mnist_cnn_background
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

NAME = "mnist_cnn"


def load_data(args):
    import numpy as np
    import tensorflow_datasets as tfds

    data_dir = args.data_dir or os.environ.get("TFDS_DATA_DIR")
    builder = tfds.builder("mnist", data_dir=data_dir)
    if not builder.is_prepared():  # never download (and never into a shared directory)
        raise SystemExit(f"error: MNIST is not prepared for tfds in {builder.data_dir_root}; "
                         f"set TFDS_DATA_DIR (or --data_dir) to a tensorflow_datasets directory "
                         f"that holds mnist")
    train = tfds.as_numpy(builder.as_dataset(split=f"train[:{args.num_train}]", batch_size=-1,
                                             as_supervised=True))
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1, as_supervised=True))
    if args.num_test:
        test = (test[0][:args.num_test], test[1][:args.num_test])
    images = train[0]  # uint8 [N, 28, 28, 1], for the contact sheet
    return {"train_x": images.astype(np.float32) / 255.0, "train_y": train[1].astype(np.int64),
            "test_x": test[0].astype(np.float32) / 255.0, "test_y": test[1].astype(np.int64),
            "num_classes": 10, "images": images,
            "description": f"MNIST (tfds, {builder.data_dir}): the first {len(images)} training "
                           f"images, {len(test[1])} test images"}


def build_model(args, data):
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1))
    h = inputs
    for filters in (16, 32):
        h = layers.Conv2D(filters, 3, padding="same", use_bias=False)(h)
        h = layers.BatchNormalization()(h)
        h = layers.ReLU()(h)
        h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    if args.dropout:
        h = layers.Dropout(args.dropout)(h)
    h = layers.Dense(64, activation="relu")(h)
    if args.dropout:
        h = layers.Dropout(args.dropout)(h)
    return keras.Model(inputs, layers.Dense(10)(h), name="cnn")


def make_parser():
    p = harness.parser(NAME, __doc__.splitlines()[0], epochs=10, batch_size=100, lr=0.01)
    p.add_argument("--num_train", type=int, default=10000,
                   help="training pool: the first N images of tfds' MNIST train split (max 60000)")
    p.add_argument("--num_test", type=int, default=0,
                   help="test on the first N test images only (0: all 10,000)")
    p.add_argument("--dropout", type=float, default=0.3,
                   help="rate of the two Dropout layers (0: none, and no Dropout layer)")
    p.add_argument("--data_dir", default=None, help="tfds data directory (default $TFDS_DATA_DIR)")
    return p


def main(argv=None):
    p = make_parser()
    args = p.parse_known_args(argv)[0]
    if not 1 <= args.num_train <= 60000:
        p.error("--num_train must be in [1, 60000]")
    if not 0 <= args.num_test <= 10000:
        p.error("--num_test must be in [0, 10000]")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    return harness.main(NAME, None, load_data, build_model, argv=argv, parser=p)


if __name__ == "__main__":
    main()
