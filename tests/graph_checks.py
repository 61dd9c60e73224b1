"""Checks on traced graphs shared by the tests."""

import tensorflow as tf

# On a GPU, TensorFlow runs these ops on int32 tensors on the host (int32 is
# treated as shape data), so a large int32 one copies data off the device
# and back on every call.
HOST_INT32_OPS = {"Add", "AddV2", "Sub", "Mul", "FloorDiv", "FloorMod", "Neg", "Maximum", "Minimum"}


def large_int32_arithmetic(graph, min_elements):
    """Names of int32 arithmetic ops in `graph` with >= `min_elements` (or unknown) outputs."""
    found = []
    for op in graph.get_operations():
        if op.type in HOST_INT32_OPS and op.outputs[0].dtype == tf.int32:
            size = op.outputs[0].shape.num_elements()
            if size is None or size >= min_elements:
                found.append(op.name)
    return found
