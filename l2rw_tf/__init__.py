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


# The public API, imported on first use so that `import l2rw_tf` (and the command line's flag
# checks) stay free of TensorFlow until it is needed.
_API = {"L2RWModel": "l2rw_tf.fit", "example_weights": "l2rw_tf.reweight",
        "per_example_loss": "l2rw_tf.reweight", "label_issues": "l2rw_tf.ranking",
        "contact_sheet": "l2rw_tf.ranking", "RunConfig": "l2rw_tf.config",
        "launch": "l2rw_tf.launch"}
__all__ = ["runtime", *_API]


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'l2rw_tf' has no attribute {name!r}")
