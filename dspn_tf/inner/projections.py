"""Projections: applied to the starting set and after every inner step, to keep the set feasible."""

import keras
import tensorflow as tf

from dspn_tf.inner.part import Part


class Projection(Part):
    """Maps `(set [batch, N, C], mask [batch, N])` to a feasible pair. Subclasses override `__call__`.

    `holds_mask` is True for a projection whose mask does not depend on the
    mask it is given: the decoder's learned starting mask then gets no
    gradient, and `DSPN` makes it non-trainable.
    """

    holds_mask = False

    def __call__(self, set_, mask):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="dspn_tf")
class ClipMask(Projection):
    """Clips the mask to [0, 1] and leaves the set as it is (the DSPN paper)."""

    def __call__(self, set_, mask):
        return set_, tf.clip_by_value(mask, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="dspn_tf")
class FullMask(Projection):
    """Holds the mask at 1 and leaves the set as it is: sets of exactly N elements, with no padding to predict."""

    holds_mask = True

    def __call__(self, set_, mask):
        return set_, tf.ones_like(mask)


_NAMED = {"clip_mask": ClipMask, "full_mask": FullMask}


def get(identifier):
    """A projection from a name ("clip_mask", "full_mask"), a `Projection`, its serialised dict, or None (`ClipMask`)."""
    if identifier is None:
        return ClipMask()
    if isinstance(identifier, str) and identifier in _NAMED:
        return _NAMED[identifier]()
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if not callable(identifier) or isinstance(identifier, str):
        raise ValueError(
            f"DSPN: `projection` must be 'clip_mask', 'full_mask' or a Projection; received {identifier!r}."
        )
    return identifier
