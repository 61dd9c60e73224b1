"""Inner objectives: what each inner step descends, per sample.

An objective maps the set encoder's embedding of the current set, the target
z, the current set and mask and the starting set to one value per sample,
`[batch]`. `Objective` is the DSPN paper's mismatch `mean_latent(rho(g(Y) - z))`
plus optional terms on the set itself, such as iDSPN's `StartRegularizer`.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.inner.part import Part
from dspn_tf.losses import huber

MISMATCHES = ("huber", "mse")


@keras.saving.register_keras_serializable(package="dspn_tf")
class StartRegularizer(Part):
    """`weight * 0.5 * ||[Y, m] - [Y_0, m_0]||^2`, summed over a sample's set and mask entries.

    Keeps the set near its start (iDSPN's random-set auto-encoder).

    Args:
        weight: A finite number > 0.
    """

    def __init__(self, weight):
        checks.positive_float("StartRegularizer", weight=weight)
        self.weight = float(weight)

    def __call__(self, set_, mask, start):
        start_set, start_mask = start
        distance = tf.reduce_sum(tf.square(set_ - start_set), axis=[1, 2])
        distance += tf.reduce_sum(tf.square(mask - start_mask), axis=1)
        return self.weight * 0.5 * distance

    def get_config(self):
        return {"weight": self.weight}


@keras.saving.register_keras_serializable(package="dspn_tf")
class Objective(Part):
    """Per-sample inner objective: the latent-mean mismatch of g(Y) and z, plus `terms`.

    Args:
        mismatch: `"huber"` (Huber with delta 1: the DSPN paper) or `"mse"`
            (0.5 * squared error: iDSPN).
        terms: Callables `(set, mask, start) -> [batch]` added to the mismatch,
            each with `get_config` (e.g. `StartRegularizer`).
    """

    def __init__(self, mismatch="huber", terms=()):
        checks.choice("Objective", "mismatch", mismatch, MISMATCHES)
        self.mismatch = mismatch
        self.terms = tuple(_deserialize(term) for term in terms)

    @property
    def start_regularizer(self):
        """The summed weight of the `StartRegularizer` terms (0 without one)."""
        return sum(term.weight for term in self.terms if isinstance(term, StartRegularizer))

    def __call__(self, embedding, z, set_, mask, start):
        """`[batch]`: the objective of each sample; `embedding` is g(set, mask), `start` `(Y_0, m_0)`."""
        diff = embedding - z  # Shape: [batch, latent].
        mismatch = huber(diff) if self.mismatch == "huber" else 0.5 * tf.square(diff)
        per_sample = tf.reduce_mean(mismatch, axis=-1)  # Shape: [batch].
        for term in self.terms:
            per_sample += term(set_, mask, start)
        return per_sample

    def get_config(self):
        return {"mismatch": self.mismatch, "terms": [keras.saving.serialize_keras_object(t) for t in self.terms]}


def _deserialize(obj):
    return keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj


def get(identifier, start_regularizer=0.0):
    """An `Objective` from a mismatch name ("huber", "mse"), an objective object or its serialised dict.

    `start_regularizer` > 0 adds a `StartRegularizer` of that weight to a named mismatch.
    """
    if isinstance(identifier, str):
        terms = (StartRegularizer(start_regularizer),) if start_regularizer > 0 else ()
        return Objective(identifier, terms)
    return _deserialize(identifier)
