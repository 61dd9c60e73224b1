"""Flat segment ids for per-row scatters (FSPool's weights, Chamfer's backward pass)."""

import tensorflow as tf


def flat_segment_ids(index, size):
    """Ids into a flat `[rows * size]` output for per-row positions `index`.

    Args:
        index: Integer tensor `[..., l]` of positions in `[0, size)`; every
            leading position is one row.
        size: Length of each output row.

    Returns:
        int64 `[rows * l]`: `row * size + index[row, i]`, rows in row-major
        order of the leading dimensions. int64 because on a GPU TensorFlow
        computes int32 arithmetic on the host, which would copy the ids off
        the device and back on every call.
    """
    shape = tf.shape(index)
    rows = tf.reduce_prod(shape[:-1])
    starts = tf.range(tf.cast(rows, tf.int64)) * tf.cast(size, tf.int64)  # Shape: [rows].
    return tf.reshape(tf.reshape(tf.cast(index, tf.int64), [rows, shape[-1]]) + starts[:, None], [-1])
