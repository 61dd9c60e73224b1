"""The state of a DSPN inner loop, carried from one inner step to the next."""

from typing import Any, NamedTuple

import tensorflow as tf


class LoopState(NamedTuple):
    """Where the inner loop is after some steps; a `tf.nest` structure, so it passes through `tf.while_loop`.

    Attributes:
        set: The current set, `[batch, N, C]`.
        mask: The current mask, `[batch, N]`.
        slots: The inner optimiser's state (a nest of tensors, e.g. momentum
            velocities; `()` for plain steps), from `InnerOptimizer.init`.
        active: `[batch]` bool, False for samples the stopping rule has stopped.
        steps: `[batch]` int32, the steps each sample has taken.
    """

    set: tf.Tensor
    mask: tf.Tensor
    slots: Any
    active: tf.Tensor
    steps: tf.Tensor


def initial_state(start_set, start_mask, slots):
    """The state before the first step: every sample active, none has stepped."""
    batch = tf.shape(start_set)[0]
    return LoopState(start_set, start_mask, slots, tf.ones([batch], tf.bool), tf.zeros([batch], tf.int32))
