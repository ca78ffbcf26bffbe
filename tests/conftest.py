"""Test set-up: quiet TF, offline MNIST from ../shared unless TFDS_DATA_DIR says otherwise."""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO.parent / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(SHARED_TFDS)

# Before any test module imports TensorFlow: the package's TensorFlow settings (oneDNN kernels)
# take effect only if they are made first, as they are when the package is run.
import l2rw_tf  # noqa: E402,F401
