"""The names the command line offers, importable without TensorFlow, so that a bad flag is
reported at once instead of after TensorFlow has loaded (several seconds) and the data (tens).
The modules that implement each choice import their names from here."""

TASKS = ("imbalance", "noisy")
METHODS = ("l2rw", "baseline", "ratio", "random", "resample", "hard_mining", "clean_only",
           "finetune", "weighted")
# Methods of each task. Imbalance (MNIST 4 vs 9): `ratio` and `hard_mining` are binary-task
# methods. Noisy labels (reference §3): `clean_only` trains on the clean set from scratch,
# `finetune` continues a finished baseline on the clean set, `weighted` (BackgroundFlip only)
# down-weights the background class.
TASK_METHODS = {
    "imbalance": ("l2rw", "baseline", "ratio", "random", "resample", "hard_mining"),
    "noisy": ("l2rw", "baseline", "random", "resample", "clean_only", "finetune", "weighted"),
}
META_GRADIENTS = ("jvp", "lookahead", "layerwise")
MODELS = ("lenet", "resnet32", "wrn28_10", "resnet", "mlp")
TFDS_DATASETS = ("mnist", "cifar10", "cifar100")
FOLDER_PREFIX = "folder:"
