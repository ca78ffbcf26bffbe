from setuptools import find_packages, setup

setup(
    name="l2rw_tf",
    version="0.1.0",
    description="Learning to Reweight Examples for Robust Deep Learning (Ren et al., 2018) in TensorFlow 2 / Keras 3",
    packages=find_packages(include=["l2rw_tf", "l2rw_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.3",
        "tensorflow-datasets>=4.9.4",
        # tfds' builders import it to find their checksums files (DatasetBuilder.code_path) but
        # tfds declares it only for Python < 3.9: without it no dataset can be downloaded.
        "importlib_resources",
        "numpy",
        "absl-py",
        "tensorboard",  # tf.summary needs it; TF 2.21 no longer installs it
        "matplotlib",
    ],
    extras_require={
        # the test suite also runs the optional parts: the examples and the cleanlab evaluation
        "test": ["pytest", "scikit-learn", "cleanlab"],
        # examples/tabular_mlp.py and examples/digits_tokens.py read datasets bundled with it
        "examples": ["scikit-learn"],
        # python -m l2rw_tf.cleanlab_eval: L2RW's label-issue ranking against cleanlab's
        "eval": ["cleanlab", "scikit-learn"],
        # KERAS_BACKEND=jax: L2RWModel's stateless JAX step (l2rw_tf/jax_step.py)
        "jax": ["jax[cpu]"],
    },
)
