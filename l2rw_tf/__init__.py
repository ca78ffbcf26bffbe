"""l2rw_tf: Learning to Reweight Examples (Ren et al., ICML 2018) in TensorFlow 2 / Keras 3."""
