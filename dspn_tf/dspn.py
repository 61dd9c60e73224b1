"""The DSPN decoder (Algorithm 1; SPEC §3).

A vector z is decoded into a set by gradient descent on a learned starting
set so that the set encoder's embedding of the set approaches z. Each step
is permutation-equivariant, and training differentiates through all steps.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.losses import huber


def decoder_output(sets, masks, inner_losses, grad_norms):
    """The dict every decoder returns, so that training code treats them alike.

    sets `[steps, batch, n, C]`, masks `[steps, batch, n]`, inner_losses and
    grad_norms `[steps - 1, batch]` (empty for one-shot decoders).
    """
    return {"sets": sets, "masks": masks, "inner_losses": inner_losses, "grad_norms": grad_norms}


@keras.saving.register_keras_serializable(package="dspn_tf")
class DSPN(keras.layers.Layer):
    """Deep Set Prediction Network decoder.

    Starting from a learned set `(1, set_size, set_channels)` ~ U[0, 1) and a
    learned mask (initially 0.5) shared by the batch, each of `iters` steps
    takes `set -= lr * dL/dset`, `mask = clip(mask - lr * dL/dmask, 0, 1)` with
    `L = sum_b mean_latent huber(encoder(set_b, mask_b) - z_b)`. Summing over
    the batch (instead of the reference's batch mean with lr 800 at batch 32)
    makes every sample's step independent of the batch size; lr 25 equals the
    reference's 800 / 32.

    Args:
        encoder: The set encoder g(set, mask) → `[batch, latent]`. Share it with
            the encoder of the target sets (SPEC §3).
        set_size: Number of set slots N.
        set_channels: Features per element C.
        iters: Default number of inner steps (paper: 10). Must be >= 0.
        lr: Per-sample inner step size (paper: 25).

    Call arguments:
        inputs: Target embedding z, `[batch, latent]`.
        iters: Optional number of steps for this call: a Python int (the
            loop is unrolled; needed for training) or a scalar int tensor (a
            graph `while_loop`, for serving with any step count).
        training: In training the outer gradient flows through every step
            (second order). Otherwise each step is cut from the graph.

    Returns:
        A dict: `sets` `[iters + 1, batch, N, C]` and `masks`
        `[iters + 1, batch, N]` (index 0 is the starting set), `inner_losses`
        and `grad_norms` `[iters, batch]` (per-sample inner loss before each
        step and the norm of its set gradient).
    """

    def __init__(self, encoder, set_size, set_channels, iters=10, lr=25.0, **kwargs):
        # The set, the mask and the inner gradient stay in the variable dtype
        # (float32) under a mixed-precision policy: only the encoder computes
        # in the policy's compute dtype.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if not isinstance(encoder, keras.layers.Layer):
            raise ValueError(f"DSPN: `encoder` must be a Keras layer; received {type(encoder).__name__}.")
        checks.positive_ints("DSPN", set_size=set_size, set_channels=set_channels)
        _check_iters(iters)
        self.encoder = encoder
        self.set_size = set_size
        self.set_channels = set_channels
        self.iters = iters
        self.lr = float(lr)
        self.latent = None

    def build(self, input_shape):
        self.latent = input_shape[-1]
        self.starting_set = self.add_weight(
            name="starting_set",
            shape=(1, self.set_size, self.set_channels),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
        )
        self.starting_mask = self.add_weight(
            name="starting_mask",
            shape=(1, self.set_size),
            initializer=keras.initializers.Constant(0.5),
        )
        if not self.encoder.built:
            self.encoder.build((None, self.set_size, self.set_channels))

    def _start(self, z):
        batch = tf.shape(z)[0]
        start_set = tf.broadcast_to(
            tf.convert_to_tensor(self.starting_set), [batch, self.set_size, self.set_channels]
        )  # Shape: [batch, N, C].
        start_mask = tf.broadcast_to(tf.convert_to_tensor(self.starting_mask), [batch, self.set_size])
        return start_set, tf.clip_by_value(start_mask, 0.0, 1.0)

    def inner_step(self, z, current_set, current_mask, training):
        """One gradient step on (set, mask); returns new set, mask, per-sample loss and grad norm."""
        with tf.GradientTape() as tape:
            tape.watch(current_set)
            tape.watch(current_mask)
            # Cast back so that the loss and the set gradient are float32 under mixed precision.
            predicted = tf.cast(self.encoder(current_set, current_mask, training=training), z.dtype)
            per_sample = tf.reduce_mean(huber(predicted - z), axis=-1)  # Shape: [batch].
            loss = tf.reduce_sum(per_sample)
        set_grad, mask_grad = tape.gradient(loss, [current_set, current_mask])
        new_set = current_set - self.lr * set_grad
        new_mask = tf.clip_by_value(current_mask - self.lr * mask_grad, 0.0, 1.0)
        grad_norm = tf.norm(tf.reshape(set_grad, [tf.shape(set_grad)[0], -1]), axis=1)
        return new_set, new_mask, per_sample, grad_norm

    def call(self, inputs, iters=None, training=False):
        z = tf.cast(inputs, self.variable_dtype)  # The inner loop runs in float32 under mixed precision.
        checks.embedding("DSPN", z, self.latent)
        if iters is None:
            iters = self.iters
        if isinstance(iters, int):
            _check_iters(iters)
            return self._unrolled(z, iters, training)
        return self._looped(z, iters, training)

    def _unrolled(self, z, iters, training):
        current_set, current_mask = self._start(z)
        sets, masks, losses, norms = [current_set], [current_mask], [], []
        for _ in range(iters):
            if not training:
                # At inference nothing needs the graph across steps.
                current_set = tf.stop_gradient(current_set)
                current_mask = tf.stop_gradient(current_mask)
            current_set, current_mask, loss, norm = self.inner_step(z, current_set, current_mask, training)
            sets.append(current_set)
            masks.append(current_mask)
            losses.append(loss)
            norms.append(norm)
        batch = tf.shape(z)[0]
        empty = tf.zeros([0, batch], z.dtype)
        return decoder_output(
            tf.stack(sets),
            tf.stack(masks),
            tf.stack(losses) if losses else empty,
            tf.stack(norms) if norms else empty,
        )

    def _looped(self, z, iters, training):
        iters = tf.convert_to_tensor(iters, tf.int32)
        if iters.shape.rank != 0:
            raise ValueError(f"DSPN: `iters` must be a scalar; received shape {iters.shape}.")
        static = tf.get_static_value(iters)
        if static is not None and static < 0:
            # Known now (eager, or a constant in a graph): the same ValueError as a Python int.
            raise ValueError(f"DSPN: `iters` must be an integer >= 0; received iters={int(static)}.")
        check = tf.debugging.assert_non_negative(iters, message="DSPN: `iters` must be >= 0")
        with tf.control_dependencies([check]):
            iters = tf.identity(iters)
        start_set, start_mask = self._start(z)
        sets = tf.TensorArray(z.dtype, size=iters + 1, element_shape=start_set.shape).write(0, start_set)
        masks = tf.TensorArray(z.dtype, size=iters + 1, element_shape=start_mask.shape).write(0, start_mask)
        losses = tf.TensorArray(z.dtype, size=iters, element_shape=z.shape[:1])
        norms = tf.TensorArray(z.dtype, size=iters, element_shape=z.shape[:1])

        def body(t, current_set, current_mask, sets, masks, losses, norms):
            current_set, current_mask, loss, norm = self.inner_step(
                z, tf.stop_gradient(current_set), tf.stop_gradient(current_mask), training
            )
            return (
                t + 1,
                current_set,
                current_mask,
                sets.write(t + 1, current_set),
                masks.write(t + 1, current_mask),
                losses.write(t, loss),
                norms.write(t, norm),
            )

        _, _, _, sets, masks, losses, norms = tf.while_loop(
            lambda t, *_: t < iters,
            body,
            (tf.constant(0), start_set, start_mask, sets, masks, losses, norms),
        )
        batch = tf.shape(z)[0]

        def stack_per_step(array):
            # Stacking zero elements of an unknown batch size fails, so an
            # iters=0 call gets an explicit empty [0, batch] tensor.
            return tf.cond(array.size() > 0, array.stack, lambda: tf.zeros([0, batch], z.dtype))

        return decoder_output(sets.stack(), masks.stack(), stack_per_step(losses), stack_per_step(norms))

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "set_size": self.set_size,
            "set_channels": self.set_channels,
            "iters": self.iters,
            "lr": self.lr,
        }


def _check_iters(iters):
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"DSPN: `iters` must be an integer >= 0; received iters={iters!r}.")
