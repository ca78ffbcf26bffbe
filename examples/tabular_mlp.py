"""Tabular: a Dense network on scikit-learn's bundled breast-cancer data, 40% noisy labels.

Data: a real dataset that ships inside scikit-learn (no download; `pip install scikit-learn`, or
`pip install -e ".[examples]"`): by default the Wisconsin diagnostic breast-cancer data
(`sklearn.datasets.load_breast_cancer`: 569 tumours, 30 numeric features, malignant / benign),
or `--dataset=wine` (`load_wine`: 178 wines, 13 features, 3 cultivars). 30% of each class is
held out as the test set (a fixed seeded split, --split_seed); the features are standardised
with the training pool's mean and std. From the training pool 10 per class (--clean_per_class)
become the clean set, and --ratio of the rest get corrupted labels. With two classes UniformFlip
flips a corrupted label to the other class, and BackgroundFlip relabels the corrupted
candidates as class 0 (so only those of class 1 change).

Model: Dense(64)-ReLU, Dense(64)-ReLU, Dense(classes) logits, no BatchNorm or dropout, so
L2RWModel picks meta_grad="layerwise". The datasets are small (the test set is 171 tumours), so
the default runs five seeds (each its own clean set, noise and initial weights) and reports each
and their mean.

    python examples/tabular_mlp.py                          # well under a minute on 2 CPU cores
    python examples/tabular_mlp.py --dataset=wine --out=runs/examples/tabular_mlp_wine
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

NAME = "tabular_mlp"
LOADERS = {"breast_cancer": "load_breast_cancer", "wine": "load_wine"}


def load_data(args):
    import numpy as np

    datasets = harness.need_sklearn()
    bunch = getattr(datasets, LOADERS[args.dataset])()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    train, test = harness.stratified_split(y, 0.3, seed=args.split_seed)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    return {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test],
            "num_classes": len(bunch.target_names),
            "class_names": [str(c) for c in bunch.target_names],
            "description": f"scikit-learn {LOADERS[args.dataset]}(): {len(y)} examples, "
                           f"{x.shape[1]} features, classes {[str(c) for c in bunch.target_names]}; "
                           f"{len(train)} training pool / {len(test)} test "
                           f"(split seed {args.split_seed})"}


def build_model(args, data):
    import keras
    from keras import layers

    return keras.Sequential([keras.Input((data["train_x"].shape[1],)),
                             layers.Dense(64, activation="relu"),
                             layers.Dense(64, activation="relu"),
                             layers.Dense(data["num_classes"])], name="mlp")


def make_parser():
    p = harness.parser(NAME, __doc__.splitlines()[0], epochs=100, batch_size=32, lr=0.01,
                       seeds="0,1,2,3,4")
    p.add_argument("--dataset", choices=sorted(LOADERS), default="breast_cancer")
    p.add_argument("--split_seed", type=int, default=0, help="seed of the train / test split")
    return p


def main(argv=None):
    return harness.main(NAME, None, load_data, build_model, argv=argv, parser=make_parser())


if __name__ == "__main__":
    main()
