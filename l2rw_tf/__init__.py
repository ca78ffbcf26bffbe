"""l2rw_tf: Learning to Reweight Examples (Ren et al., ICML 2018) in TensorFlow 2 / Keras 3."""
import os

# TensorFlow's oneDNN CPU kernels make the steps here 1.25-2.6x faster (results/bench/README.md),
# but TensorFlow turns them on by default only on recent Intel CPUs. The variable is read when
# TensorFlow is first imported, so it is set here, before any module of the package imports it;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment keeps TensorFlow's stock kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def runtime():
    """What computes the results (recorded beside them): oneDNN's and TensorFlow's stock kernels
    round differently, and a run of the same code and seed differs between package versions."""
    from importlib import metadata
    import tensorflow as tf
    versions = {name: metadata.version(name) for name in ("keras", "tensorflow-datasets", "numpy")}
    return {"tensorflow": tf.__version__, **versions,
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
