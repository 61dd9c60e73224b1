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


def project_simplex(x):
    """The Euclidean projection of every vector along the last axis of `x` onto the probability simplex.

    The exact projection `argmin_p ||p - x||` over `{p >= 0, sum p = 1}`,
    by sorting: with `u` the entries sorted in decreasing order and `rho` the
    largest `k` with `u_k > (sum_{i <= k} u_i - 1) / k`, the projection is
    `max(x - theta, 0)` with `theta = (sum_{i <= rho} u_i - 1) / rho`
    (Held, Wolfe and Crowder, 1974). Differentiable almost everywhere: on the
    support the Jacobian is `I - 1 1^T / |support|`, elsewhere 0.

    Args:
        x: A float tensor `[..., C]`.

    Returns:
        A tensor of the shape of `x` whose vectors along the last axis are nonnegative and sum to 1.
    """
    x = tf.convert_to_tensor(x)
    u = tf.sort(x, axis=-1, direction="DESCENDING")
    partial = tf.cumsum(u, axis=-1) - 1.0  # Shape: [..., C].
    k = tf.cast(tf.range(1, tf.shape(x)[-1] + 1), x.dtype)
    # The entries above the threshold are a prefix of `u`; `rho` counts them (at least 1 for finite x).
    rho = tf.maximum(tf.reduce_sum(tf.cast(u - partial / k > 0, tf.int32), axis=-1, keepdims=True), 1)
    at_rho = tf.cast(tf.equal(tf.range(1, tf.shape(x)[-1] + 1), rho), x.dtype)  # One-hot of position rho.
    theta = tf.reduce_sum(partial * at_rho, axis=-1, keepdims=True) / tf.cast(rho, x.dtype)
    return tf.nn.relu(x - theta)


MASK_MODES = ("full", "clip")


@keras.saving.register_keras_serializable(package="dspn_tf")
class SimplexProjection(Projection):
    """Projects every element of the set onto the probability simplex (`project_simplex`).

    For sets whose elements are distributions, such as the one-hot numbers
    of iDSPN's class-specific numbering: each element `[C]` becomes the
    nearest vector with nonnegative entries summing to 1.

    Args:
        mask: `"full"`: every slot is an element, the mask is set to 1 (it
            stays connected to the graph with a zero gradient, so a learned
            starting mask gets a zero gradient rather than none); `"clip"`:
            the mask is clipped to [0, 1] (as `ClipMask`).
    """

    def __init__(self, mask="full"):
        if mask not in MASK_MODES:
            raise ValueError(f"SimplexProjection: `mask` must be one of {MASK_MODES}; received mask={mask!r}.")
        self.mask = mask

    def __call__(self, set_, mask):
        if self.mask == "full":
            return project_simplex(set_), mask * 0.0 + 1.0
        return project_simplex(set_), tf.clip_by_value(mask, 0.0, 1.0)

    def get_config(self):
        return {"mask": self.mask}


_NAMED = {"clip_mask": ClipMask, "full_mask": FullMask, "simplex": SimplexProjection}


def get(identifier):
    """A projection from a name ("clip_mask", "full_mask", "simplex"), a `Projection`, its serialised dict, or None (`ClipMask`)."""
    if identifier is None:
        return ClipMask()
    if isinstance(identifier, str) and identifier in _NAMED:
        return _NAMED[identifier]()
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if not callable(identifier) or isinstance(identifier, str):
        raise ValueError(
            f"DSPN: `projection` must be 'clip_mask', 'full_mask', 'simplex' or a Projection; received {identifier!r}."
        )
    return identifier
