"""dspn_tf: Deep Set Prediction Networks in TensorFlow / Keras 3."""

__version__ = "0.1.0"
