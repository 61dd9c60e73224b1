"""Projections: applied to the starting set and after every inner step, to keep the set feasible."""

import keras
import tensorflow as tf

from dspn_tf.inner.part import Part


class Projection(Part):
    """Maps `(set [batch, N, C], mask [batch, N])` to a feasible pair. Subclasses override `__call__`."""

    def __call__(self, set_, mask):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="dspn_tf")
class ClipMask(Projection):
    """Clips the mask to [0, 1] and leaves the set as it is (the DSPN paper)."""

    def __call__(self, set_, mask):
        return set_, tf.clip_by_value(mask, 0.0, 1.0)


def get(identifier):
    """A projection from a name ("clip_mask"), a `Projection`, its serialised dict, or None (`ClipMask`)."""
    if identifier is None or identifier == "clip_mask":
        return ClipMask()
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if not callable(identifier) or isinstance(identifier, str):
        raise ValueError(f"DSPN: `projection` must be 'clip_mask' or a Projection; received {identifier!r}.")
    return identifier
