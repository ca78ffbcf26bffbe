"""The names the command line offers, importable without TensorFlow, so that a bad flag is
reported at once instead of after TensorFlow has loaded (several seconds) and the data (tens).
The modules that implement each choice import their names from here."""
import re

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
# --distribute: one device, tf.distribute's MirroredStrategy (one machine) or
# MultiWorkerMirroredStrategy (a cluster described by TF_CONFIG); see distribute.py.
DISTRIBUTE = ("none", "mirrored", "multi_worker")
# --mixed_precision: Keras' global dtype policies (float32 = no mixed precision).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# --dataset: any tfds image-classification dataset by name (or an image folder, FOLDER_PREFIX).
# Whether tfds has a dataset of that name, with features image and label, needs tfds and is
# checked when the data is loaded (data.load_dataset); here only the name's form:
# name[/config][:version] (tfds' own syntax without namespaces, whose "ns:" would clash with
# "folder:", and without builder kwargs).
TFDS_NAME = re.compile(r"[a-zA-Z]\w*(/[\w+\-.]+)?(:(\d+|\*)(\.(\d+|\*)){2})?")
# The paper's datasets: tfds keys their examples by source index, so data reads them in the
# order of their source files (data._in_source_order); any other dataset in tfds' stored order.
TFDS_DATASETS = ("mnist", "cifar10", "cifar100")
FOLDER_PREFIX = "folder:"


def is_tfds_name(name):
    """Whether `name` has the form of a tfds dataset name: name[/config][:version]."""
    return TFDS_NAME.fullmatch(name) is not None
