"""Inner optimisers: how a gradient on the set becomes an update direction.

Built the way optax builds weight optimisers: a chain of small transforms,
each an `(init, update)` pair with its own state, applied to the pair
`(set gradient, mask gradient)`. The decoder then steps
`Y <- Y - lr * direction`; the step size `lr` stays the decoder's, so that
iDSPN's implicit gradient (a plain step of that size) is defined for every
optimiser.

Everything works per sample: a transform may mix a sample's set and mask
entries but never two samples, so a step of one sample does not depend on the
rest of the batch.

A new inner optimiser is one `InnerTransform` subclass (see `Sign` in the
tests for an example defined outside the library).
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.inner.part import Part

# Added to a sample's gradient norm before dividing by it when clipping (as iDSPN does).
CLIP_EPSILON = 1e-6


class InnerTransform(Part):
    """One link of an inner optimiser. Subclasses override `update`, and `init` if they keep state.

    `updates` and the returned directions are `(set [batch, N, C], mask [batch, N])`
    pairs; `slots` is this link's state, any nest of tensors (`()` for none).
    Register a subclass with `keras.saving.register_keras_serializable` and
    give it `get_config` so that models using it save and load.
    """

    def init(self, set_, mask):
        """The link's state before the first step."""
        del set_, mask
        return ()

    def update(self, updates, slots):
        """`(directions, new slots)` for the incoming `(set, mask)` directions."""
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="dspn_tf")
class ClipPerSample(InnerTransform):
    """Scales each sample's directions down to at most `max_norm` L2 norm over its set and mask entries.

    The scale is a constant to backpropagation, as in iDSPN (CLEVR: 10).
    """

    def __init__(self, max_norm):
        checks.positive_float("ClipPerSample", max_norm=max_norm)
        self.max_norm = float(max_norm)

    def update(self, updates, slots):
        set_grad, mask_grad = updates
        total = tf.sqrt(tf.reduce_sum(tf.square(set_grad), axis=[1, 2]) + tf.reduce_sum(tf.square(mask_grad), axis=1))
        scale = tf.stop_gradient(tf.minimum(1.0, self.max_norm / (total + CLIP_EPSILON)))  # Shape: [batch].
        return (set_grad * scale[:, None, None], mask_grad * scale[:, None]), slots

    def get_config(self):
        return {"max_norm": self.max_norm}


@keras.saving.register_keras_serializable(package="dspn_tf")
class Momentum(InnerTransform):
    """Heavy-ball or Nesterov momentum; the velocity starts at zero.

    `v <- beta * v + g`; the direction is `v` (heavy ball) or `g + beta * v`
    (Nesterov, iDSPN with beta 0.9).
    """

    def __init__(self, beta, nesterov=True):
        if not 0.0 < float(beta) < 1.0:
            raise ValueError(f"Momentum: `beta` must be in (0, 1); received beta={beta!r}.")
        self.beta = float(beta)
        self.nesterov = bool(nesterov)

    def init(self, set_, mask):
        return (tf.zeros_like(set_), tf.zeros_like(mask))

    def update(self, updates, slots):
        velocity = tuple(self.beta * v + g for v, g in zip(slots, updates))
        if self.nesterov:
            return tuple(g + self.beta * v for g, v in zip(updates, velocity)), velocity
        return velocity, velocity

    def get_config(self):
        return {"beta": self.beta, "nesterov": self.nesterov}


@keras.saving.register_keras_serializable(package="dspn_tf")
class InnerOptimizer(InnerTransform):
    """A chain of transforms applied in order; with none, the direction is the gradient (plain steps)."""

    def __init__(self, transforms=()):
        self.transforms = tuple(
            keras.saving.deserialize_keras_object(t) if isinstance(t, dict) else t for t in transforms
        )
        for t in self.transforms:
            if not isinstance(t, InnerTransform):
                raise ValueError(f"InnerOptimizer: every transform must be an InnerTransform; received {t!r}.")

    def init(self, set_, mask):
        return tuple(t.init(set_, mask) for t in self.transforms)

    def update(self, updates, slots):
        new_slots = []
        for transform, state in zip(self.transforms, slots):
            updates, state = transform.update(updates, state)
            new_slots.append(state)
        return updates, tuple(new_slots)

    def get_config(self):
        return {"transforms": [keras.saving.serialize_keras_object(t) for t in self.transforms]}


def chain(*transforms):
    """`InnerOptimizer(transforms)`: e.g. `chain(ClipPerSample(10), Momentum(0.9))` (iDSPN on CLEVR)."""
    return InnerOptimizer(transforms)


def from_options(momentum=0.0, nesterov=True, clip=None):
    """The inner optimiser of DSPN's shorthand keywords: clip first, then momentum (as iDSPN)."""
    transforms = []
    if clip is not None:
        transforms.append(ClipPerSample(clip))
    if momentum > 0:
        transforms.append(Momentum(momentum, nesterov))
    return InnerOptimizer(transforms)


def get(identifier):
    """An inner optimiser from an `InnerTransform`, its serialised dict, or None (plain steps)."""
    if identifier is None:
        return InnerOptimizer()
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if not isinstance(identifier, InnerTransform):
        raise ValueError(f"DSPN: `optimizer` must be an InnerTransform (or None); received {identifier!r}.")
    return identifier
