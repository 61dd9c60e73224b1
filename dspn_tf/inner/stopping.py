"""Stopping rules: which samples stop moving before the last inner step."""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.inner.part import Part


class StoppingRule(Part):
    """Decides, before each step, which samples still move.

    `update(active, objective)` gets the `[batch]` bool of active samples and
    their `[batch]` objective before the step, and returns the new `active`;
    a stopped sample keeps its set, mask and optimiser state from then on.
    `can_stop` is False for a rule that never stops a sample (the loop then
    skips the freezing and the early exit of a graph loop).
    """

    can_stop = True

    def update(self, active, objective):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="dspn_tf")
class Never(StoppingRule):
    """Every sample takes every step (the DSPN paper)."""

    can_stop = False

    def update(self, active, objective):
        del objective
        return active


@keras.saving.register_keras_serializable(package="dspn_tf")
class Tolerance(StoppingRule):
    """A sample stops for good once its inner objective is below `tolerance` (per-sample early stopping)."""

    def __init__(self, tolerance):
        checks.positive_float("Tolerance", tolerance=tolerance)
        self.tolerance = float(tolerance)

    def update(self, active, objective):
        return tf.logical_and(active, objective >= self.tolerance)

    def get_config(self):
        return {"tolerance": self.tolerance}


def get(identifier):
    """A stopping rule from a tolerance (a number), None (`Never`), a `StoppingRule` or its serialised dict."""
    if identifier is None:
        return Never()
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, StoppingRule):
        return identifier
    if isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
        return Tolerance(identifier)
    raise ValueError(f"DSPN: `stopping` must be a StoppingRule, a tolerance or None; received {identifier!r}.")
