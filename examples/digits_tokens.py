"""Token sequences: an Embedding + Conv1D network on digit images read as sequences of 64 tokens.

Data, said plainly: no labelled text corpus ships inside an installed package here (downloads
such as 20 Newsgroups or IMDB are not available offline), so the token sequences are real data of
another kind: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`, no
download: 1,797 images of 8x8 pixels, each an integer intensity 0..16, classes 0-9), each image
read row by row as a sequence of 64 tokens from a vocabulary of 17. The network never sees them
as numbers or as a grid: each token is looked up in an `Embedding`, as words are, and a 1-D
convolution runs along the sequence, as in a text CNN. It shows L2RW on an integer-token input
and an Embedding layer; it says nothing about natural language.

30% of each class is the test set (a fixed seeded split, --split_seed); from the training pool
10 per class (--clean_per_class) become the clean set, and --ratio of the rest get corrupted
labels (UniformFlip by default). Model: Embedding(17, 16), Conv1D(32, 8)-ReLU, MaxPool(2),
Conv1D(64, 8)-ReLU, global max pooling, Dense(10) logits; L2RWModel picks meta_grad="jvp" (an
Embedding). The test set is 540 digits, so the default runs three seeds.

    python examples/digits_tokens.py                        # about 2 minutes on 2 CPU cores
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

NAME = "digits_tokens"
VOCABULARY = 17  # intensities 0..16


def load_data(args):
    import numpy as np

    datasets = harness.need_sklearn()
    bunch = datasets.load_digits()
    tokens, y = bunch.data.astype(np.int32), bunch.target.astype(np.int64)  # [1797, 64] in 0..16
    assert tokens.min() >= 0 and tokens.max() < VOCABULARY
    train, test = harness.stratified_split(y, 0.3, seed=args.split_seed)
    return {"train_x": tokens[train], "train_y": y[train], "test_x": tokens[test],
            "test_y": y[test], "num_classes": 10,
            "description": f"scikit-learn load_digits() as token sequences: {len(y)} sequences "
                           f"of 64 tokens (vocabulary {VOCABULARY}), 10 classes; "
                           f"{len(train)} training pool / {len(test)} test "
                           f"(split seed {args.split_seed})"}


def build_model(args, data):
    import keras
    from keras import layers

    tokens = keras.Input((64,), dtype="int32")
    h = layers.Embedding(VOCABULARY, 16)(tokens)
    h = layers.Conv1D(32, 8, padding="same", activation="relu")(h)
    h = layers.MaxPooling1D(2)(h)
    h = layers.Conv1D(64, 8, padding="same", activation="relu")(h)
    h = layers.GlobalMaxPooling1D()(h)
    return keras.Model(tokens, layers.Dense(10)(h), name="token_cnn")


def make_parser():
    p = harness.parser(NAME, __doc__.splitlines()[0], epochs=30, batch_size=32, lr=0.01,
                       seeds="0,1,2")
    p.add_argument("--split_seed", type=int, default=0, help="seed of the train / test split")
    return p


def main(argv=None):
    return harness.main(NAME, None, load_data, build_model, argv=argv, parser=make_parser())


if __name__ == "__main__":
    main()
