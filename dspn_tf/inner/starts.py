"""Starting sets: where the inner loop begins, per sample.

A starting-set part creates what it needs in `build(decoder, latent, trainable)`:
weights through `decoder.add_weight` and sub-layers as attributes of the
decoder, so that they are the decoder's own (in its checkpoints, `.keras`
files and `trainable_variables`). `__call__(decoder, z, training)` returns
the starting set `[batch, N, C]` and mask `[batch, N]`; the decoder applies
its projection to them (by default the mask is clipped to [0, 1]).
`trainable` is False when nothing can train the start (implicit gradients
without a start regulariser): the weights are then created non-trainable.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.inner.part import Part

# iDSPN's random starting set: per-sample N(0, 0.1^2) noise.
RANDOM_START_STDDEV = 0.1
# The algorithm of the stateless draw at inference. Left automatic, TensorFlow
# picks Philox eagerly and in a graph on the CPU but another algorithm under XLA
# (`jit_compile=True`), which gave another start (max difference 0.43). Philox
# is also what the automatic choice drew before it was named here, so starts
# drawn by older versions (and files saved by them) keep their values.
INFERENCE_ALGORITHM = "philox"


class StartingSet(Part):
    """Base class of the starting-set parts; subclasses override `build` and `__call__`."""

    def build(self, decoder, latent, trainable):
        del decoder, latent, trainable

    def __call__(self, decoder, z, training):
        raise NotImplementedError


def _learned_mask(decoder, trainable):
    decoder.starting_mask = decoder.add_weight(
        name="starting_mask",
        shape=(1, decoder.set_size),
        initializer=keras.initializers.Constant(0.5),
        trainable=trainable,
    )


def _broadcast_mask(decoder, batch):
    return tf.broadcast_to(tf.convert_to_tensor(decoder.starting_mask), [batch, decoder.set_size])


@keras.saving.register_keras_serializable(package="dspn_tf")
class LearnedStart(StartingSet):
    """One learned set and mask (0.5), shared by the batch: the DSPN paper.

    Args:
        stddev: None: the set is initialised U[0, 1) (the DSPN paper); a
            positive number: N(0, stddev^2) (iDSPN's random-set auto-encoder: 0.1).
    """

    def __init__(self, stddev=None):
        if stddev is not None:
            checks.positive_float("LearnedStart", stddev=stddev)
            stddev = float(stddev)
        self.stddev = stddev

    def build(self, decoder, latent, trainable):
        del latent
        if self.stddev is None:
            initializer = keras.initializers.RandomUniform(0.0, 1.0)
        else:
            initializer = keras.initializers.RandomNormal(0.0, self.stddev)
        decoder.starting_set = decoder.add_weight(
            name="starting_set",
            shape=(1, decoder.set_size, decoder.set_channels),
            initializer=initializer,
            trainable=trainable,
        )
        _learned_mask(decoder, trainable)

    def __call__(self, decoder, z, training):
        batch = tf.shape(z)[0]
        shape = [batch, decoder.set_size, decoder.set_channels]
        start_set = tf.broadcast_to(tf.convert_to_tensor(decoder.starting_set), shape)  # Shape: [batch, N, C].
        return start_set, _broadcast_mask(decoder, batch)

    def get_config(self):
        return {"stddev": self.stddev}


@keras.saving.register_keras_serializable(package="dspn_tf")
class RandomStart(StartingSet):
    """Each sample starts from its own N(0, stddev^2) set (iDSPN) and the learned starting mask.

    In training every call draws new noise; at inference (`training=False`)
    the draw is stateless, so the same `seed` and batch give the same start,
    eagerly, in a graph, compiled with XLA and in an exported SavedModel: the
    stateless draw names its algorithm (Philox, `INFERENCE_ALGORITHM`), which
    TensorFlow's automatic choice would not keep under XLA.

    Args:
        stddev: Standard deviation of the noise (iDSPN: 0.1).
        seed: Integer seed, or None.
    """

    def __init__(self, stddev=RANDOM_START_STDDEV, seed=None):
        checks.positive_float("RandomStart", stddev=stddev)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"RandomStart: `seed` must be an integer or None; received seed={seed!r}.")
        self.stddev = float(stddev)
        self.seed = seed

    def build(self, decoder, latent, trainable):
        del latent
        _learned_mask(decoder, trainable)

    def __call__(self, decoder, z, training):
        batch = tf.shape(z)[0]
        shape = [batch, decoder.set_size, decoder.set_channels]
        if training:
            start_set = tf.random.normal(shape, stddev=self.stddev, seed=self.seed, dtype=z.dtype)
        else:
            seed = tf.constant([self.seed or 0, 0], tf.int64)
            start_set = tf.random.stateless_normal(
                shape, seed=seed, stddev=self.stddev, dtype=z.dtype, alg=INFERENCE_ALGORITHM
            )
        return start_set, _broadcast_mask(decoder, batch)

    def get_config(self):
        return {"stddev": self.stddev, "seed": self.seed}


@keras.saving.register_keras_serializable(package="dspn_tf")
class MLPStart(StartingSet):
    """An MLP predicts each sample's starting set and mask from z; the inner loop refines it.

    The DSPN paper's discussion proposes this ("better initialise [the set],
    perhaps with an MLP"): DSPN becomes a set-aware refinement of an MLP's
    prediction. The head is the MLP baseline's: `z -> Dense(dim) -> ReLU ->
    Dense(dim) -> ReLU -> Dense(N * (C + 1))`, the last channel being the mask,
    to which `mask_offset` is added (0.5: an untrained head starts near the
    learned start's mask). It trains through the inner loop (unrolled
    gradients), or through the start regulariser only (implicit ones).

    Args:
        dim: Hidden width of the head.
        mask_offset: Added to the raw mask output.
    """

    def __init__(self, dim=256, mask_offset=0.5):
        checks.positive_ints("MLPStart", dim=dim)
        self.dim = dim
        self.mask_offset = checks.finite_float("MLPStart", "mask_offset", mask_offset)

    def build(self, decoder, latent, trainable):
        policy = decoder.dtype_policy
        decoder.start_network = keras.Sequential(
            [
                keras.layers.Dense(self.dim, activation="relu", name="hidden1", dtype=policy),
                keras.layers.Dense(self.dim, activation="relu", name="hidden2", dtype=policy),
                keras.layers.Dense(decoder.set_size * (decoder.set_channels + 1), name="output", dtype=policy),
            ],
            name="start_network",
            trainable=trainable,
        )
        decoder.start_network.build((None, latent))

    def __call__(self, decoder, z, training):
        x = decoder.start_network(z, training=training)
        x = tf.reshape(x, [-1, decoder.set_size, decoder.set_channels + 1])  # Shape: [batch, N, C + 1].
        return x[..., :-1], x[..., -1] + tf.cast(self.mask_offset, x.dtype)

    def get_config(self):
        return {"dim": self.dim, "mask_offset": self.mask_offset}


_NAMED = {"learned": LearnedStart, "random": RandomStart, "mlp": MLPStart}


def get(identifier, seed=None):
    """A starting-set part from a name ("learned", "random", "mlp"), a part, or its serialised dict.

    `seed` seeds a named random start.
    """
    if isinstance(identifier, str):
        if identifier not in _NAMED:
            raise ValueError(
                f"DSPN: `starting_set` must be one of {', '.join(map(repr, _NAMED))} or a StartingSet; "
                f"received starting_set={identifier!r}."
            )
        return RandomStart(seed=seed) if identifier == "random" else _NAMED[identifier]()
    if isinstance(identifier, dict):
        identifier = keras.saving.deserialize_keras_object(identifier)
    if not isinstance(identifier, StartingSet):
        raise ValueError(f"DSPN: `starting_set` must be a name or a StartingSet; received {identifier!r}.")
    return identifier


def name_of(part):
    """The shorthand name of a default-configured part ("learned", "random", "mlp"), else None."""
    for name, cls in _NAMED.items():
        if type(part) is cls:
            default = cls().get_config()
            config = part.get_config()
            if name == "random":
                config = {**config, "seed": None}
            if config == default:
                return name
    return None
