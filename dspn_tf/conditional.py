"""`ConditionalDSPN`: a DSPN decoder whose inner objective sees an input set next to the output set.

For set-to-set tasks in which output element i belongs to input element i
(iDSPN's class-specific numbering): the objective encoder embeds the
feature-wise concatenation `[Y, X]`, so the inner loop can make each output
element depend on its own input element. Used by `dspn_tf.models.SetToSet`.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.dspn import DSPN, _float32_compute


class _ConditionSlot:
    """Holds the condition of the call in progress (a plain object, so Keras and checkpoints ignore it)."""

    def __init__(self):
        self.value = None


@keras.saving.register_keras_serializable(package="dspn_tf")
class ConditionalDSPN(DSPN):
    """A DSPN whose inner objective embeds the output set concatenated with an input set: g([Y, X], mask).

    Every inner step descends `objective(g([Y, X], m), z)`, where `X`
    `[batch, N, condition_channels]` is the call's `condition`: row i of the
    output set is concatenated with row i of `X`, so the decoder predicts one
    output element per input element. Everything else (starting set, inner
    optimiser, projection, stopping rule, unrolled or implicit gradients) is
    `DSPN`'s. With iDSPN's numbering setting: `objective` mse, `starting_set`
    "random", `projection=SimplexProjection()`, lr 1, 20 steps.

    Args:
        encoder: The objective encoder g, on `set_channels + condition_channels`
            features per element (not shared with the encoder of the input).
        set_size: Number of set slots N (the condition's number of elements).
        set_channels: Features per output element C.
        iters: Default number of inner steps.
        lr: Per-sample inner step size.
        condition_channels: Features per element of the condition X.
        **kwargs: `DSPN`'s keywords (`gradient`, `momentum`, `clip`,
            `inner_loss`, `starting_set`, `projection`, ...).

    Call arguments:
        inputs: Target embedding z, `[batch, latent]`.
        condition: The input set X, `[batch, N, condition_channels]` (required).
        iters: As `DSPN`.
        training: As `DSPN`.

    Returns:
        `DSPN`'s output dict.

    Raises:
        ValueError: if `condition` is missing or its shape does not fit.
    """

    # The condition is per-call state, which a cached graph loop would capture once: eager
    # calls stay eager.
    _graph_loop_when_eager = False

    def __init__(self, encoder, set_size, set_channels, iters=10, lr=25.0, *, condition_channels, **kwargs):
        super().__init__(encoder, set_size, set_channels, iters, lr, **kwargs)
        checks.positive_ints("ConditionalDSPN", condition_channels=condition_channels)
        self.condition_channels = condition_channels
        self._condition = _ConditionSlot()

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build((None, self.set_size, self.set_channels + self.condition_channels))
        super().build(input_shape)

    def call(self, inputs, condition=None, iters=None, training=False):
        if condition is None:
            raise ValueError(
                "ConditionalDSPN: `condition` (the input set, [batch, N, condition_channels]) is required."
            )
        condition = tf.cast(condition, self.variable_dtype)
        expected = (self.set_size, self.condition_channels)
        if condition.shape.rank != 3 or not condition.shape[1:].is_compatible_with(expected):
            raise ValueError(
                f"ConditionalDSPN: `condition` must be [batch, {expected[0]}, {expected[1]}]; "
                f"received shape {condition.shape}."
            )
        self._condition.value = condition
        try:
            return super().call(inputs, iters=iters, training=training)
        finally:
            self._condition.value = None

    def objective(self, z, current_set, current_mask, start, training=False):
        """Per-sample inner objective `[batch]` of g([set, condition], mask); only inside a call."""
        condition = self._condition.value
        if condition is None:
            raise ValueError("ConditionalDSPN: the objective is defined inside a call, which gives the condition.")
        joint = tf.concat([current_set, tf.cast(condition, current_set.dtype)], axis=-1)
        with _float32_compute(self.encoder):
            embedding = tf.cast(self.encoder(joint, current_mask, training=training), z.dtype)
        return self.inner_objective(embedding, z, current_set, current_mask, start)

    def get_config(self):
        return {**super().get_config(), "condition_channels": self.condition_channels}
