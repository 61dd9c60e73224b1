"""Keeps TensorFlow's C++ start-up logging out of the entry points' output.

Imported first by `train.train`, `train.evaluate` and `train.export`, before anything
imports TensorFlow. Importing TensorFlow 2.21 on a CPU machine prints about ten lines
from C++ (oneDNN, CUDA stubs, cuInit, CPU features) before `TF_CPP_MIN_LOG_LEVEL` is
even read: absl writes everything logged before its `InitializeLog()` to stderr. So
besides setting `TF_CPP_MIN_LOG_LEVEL=2` (C++ errors still show), the import and the
device discovery run with file descriptor 2 redirected to a temporary file, and every
line of it that is not known start-up noise is written back to stderr afterwards.
TensorFlow's Python INFO lines are dropped too (it logs one per checkpoint through absl).

A `TF_CPP_MIN_LOG_LEVEL` the user set is respected: then nothing is filtered and
TensorFlow logs as it always does (`TF_CPP_MIN_LOG_LEVEL=0 python -m train.train ...`
shows everything).
"""

import logging
import os
import sys
import tempfile

# Substrings of TensorFlow's start-up lines on machines without a GPU (or without CUDA
# libraries), as TensorFlow 2.16-2.21 print them.
NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cudart_stub.cc",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)


def is_noise(line):
    """Whether `line` is one of TensorFlow's known start-up messages."""
    return any(pattern in line for pattern in NOISE)


def drop_tensorflow_info(record):
    """A `logging` filter: False for INFO (and lower) records logged from TensorFlow's own files."""
    return record.levelno > logging.INFO or f"{os.sep}tensorflow{os.sep}" not in record.pathname


def quiet_tensorflow(environ=None):
    """Imports TensorFlow without its start-up noise; returns whether it filtered anything.

    Does nothing (returns False) if TensorFlow is already imported or the user set
    `TF_CPP_MIN_LOG_LEVEL`.
    """
    environ = os.environ if environ is None else environ
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in environ:
        return False
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # cuInit and its error line happen here.
            # TensorFlow's Python INFO lines: its own logger, and absl's (`app.run` raises absl
            # to INFO, and TensorFlow logs "Sharding callback duration" at every checkpoint).
            tf.get_logger().setLevel(logging.WARNING)
            logging.getLogger("absl").addFilter(drop_tensorflow_info)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True) if not is_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return True


quiet_tensorflow()
