"""The DSPN decoder (Algorithm 1 of the DSPN paper) and iDSPN's inner-loop options.

A vector z is decoded into a set by gradient descent on a starting set so
that the set encoder's embedding of the set approaches z. Each step is
permutation-equivariant. By default training differentiates through every
step (the DSPN paper); `gradient="implicit"` differentiates only the last
step from the detached previous set (iDSPN, Zhang et al., ICLR 2022).
"""

import contextlib

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.losses import huber

GRADIENTS = ("unrolled", "implicit")
INNER_LOSSES = ("huber", "mse")
STARTING_SETS = ("learned", "random")
# iDSPN's random starting set: per-sample N(0, 0.1^2) noise.
RANDOM_START_STDDEV = 0.1
# Added to a sample's gradient norm before dividing by it when clipping (as iDSPN does).
_CLIP_EPSILON = 1e-6


def decoder_output(sets, masks, inner_losses, grad_norms, steps=None):
    """The dict every decoder returns, so that training code treats them alike.

    sets `[steps, batch, n, C]`, masks `[steps, batch, n]`, inner_losses and
    grad_norms `[steps - 1, batch]` (empty for one-shot decoders). An
    iterative decoder also gives `steps` `[batch]`, the inner steps each
    sample took.
    """
    out = {"sets": sets, "masks": masks, "inner_losses": inner_losses, "grad_norms": grad_norms}
    if steps is not None:
        out["steps"] = steps
    return out


@keras.saving.register_keras_serializable(package="dspn_tf")
class DSPN(keras.layers.Layer):
    """Deep Set Prediction Network decoder, with iDSPN's inner-loop options.

    Each of `iters` inner steps moves the set and its mask down the gradient
    of the inner objective `L = sum_b l_b`, where `l_b` is sample b's
    mismatch between `encoder(set_b, mask_b)` and `z_b`, averaged over the
    latent dimensions. Summing over the batch (instead of the reference's
    batch mean with lr 800 at batch 32) makes every sample's step
    independent of the batch size; lr 25 equals the reference's 800 / 32.
    The mask is clipped to [0, 1] after every step.

    The defaults are the DSPN paper's algorithm: a learned starting set
    (initialised U[0, 1)) and mask (0.5) shared by the batch, the Huber
    mismatch, plain gradient steps of size 25, and exact second-order
    backpropagation through all steps. The other options are those of iDSPN
    (Zhang, Zhang, Lacoste-Julien, Burghouts, Snoek, ICLR 2022), whose CLEVR
    setting is `gradient="implicit", lr=1, momentum=0.9, nesterov=True,
    clip=10, inner_loss="mse", starting_set="random"`.

    Args:
        encoder: The set encoder g(set, mask) → `[batch, latent]`. Share it with
            the encoder of the target sets (the paper does).
        set_size: Number of set slots N.
        set_channels: Features per element C.
        iters: Default number of inner steps (paper: 10). Must be >= 0.
        lr: Per-sample inner step size (paper: 25; iDSPN: 1).
        gradient: How training differentiates the inner loop.
            `"unrolled"`: through every step, second order (the paper).
            `"implicit"`: iDSPN's approximate implicit differentiation. The
            first `iters - 1` steps keep no graph; the outer gradient is that
            of one plain step `Y_T = stop(Y_{T-1}) - lr * dL/dY` (and the same
            for the clipped mask) from the detached previous set, with
            respect to every weight and to z. Momentum, clipping and early
            stopping shape the forward steps (and so the output's value) but
            not this gradient. Memory and backward cost do not grow with
            `iters`. Only the final step carries gradients, so a training
            loss must score the final step only. A learned starting set then
            gets gradient only through `start_regularizer` (the last step
            starts from a detached set); with `start_regularizer=0` the
            starting set and mask are created non-trainable and keep their
            initial values, so that no optimizer sees variables without
            gradients.
        momentum: Heavy-ball momentum of the inner steps, in [0, 1)
            (iDSPN: 0.9). The velocity starts at zero.
        nesterov: With `momentum > 0`, take Nesterov steps (iDSPN) rather
            than heavy-ball ones.
        clip: If set, each sample's inner gradient is scaled down to at most
            this L2 norm, taken over all of that sample's set and mask
            entries, before the step (iDSPN: 10 on CLEVR). The scale factor
            is a constant to backpropagation, as in iDSPN.
        inner_loss: `"huber"` (the paper: Huber with delta 1, latent mean) or
            `"mse"` (iDSPN: 0.5 * squared error, latent mean).
        starting_set: `"learned"` (the paper) or `"random"`: every sample
            starts from its own N(0, 0.1²) set (iDSPN). The mask starts from
            the learned starting mask in both cases.
        start_regularizer: Weight of `0.5 * ||[Y, m] - [Y_0, m_0]||²` (summed
            over the sample's set and mask entries) added to each sample's
            inner objective, which keeps the set near its start (iDSPN's
            random-set auto-encoder: 0.1 on a mean over entries, i.e.
            0.1 / (N * (C + 1)) here). 0 disables it.
        tolerance: If set, a sample whose inner objective is below this
            value stops moving (per-sample early stopping); the loop still
            runs at most `iters` steps, and a graph loop (tensor `iters`)
            ends as soon as every sample has stopped.
        seed: Seed of the random starting sets. At inference (`training=False`)
            the same seed and inputs give the same outputs, which makes
            evaluation and serving reproducible; in training every call
            draws new noise.

    Call arguments:
        inputs: Target embedding z, `[batch, latent]`.
        iters: Optional number of steps for this call: a Python int (the
            loop is unrolled) or a scalar int tensor (a graph `while_loop`,
            for serving with any step count). Unrolled training needs a
            Python int; implicit training takes either.
        training: In training the outer gradient flows through the steps
            (as `gradient` says). Otherwise each step is cut from the graph.

    Returns:
        A dict: `sets` `[iters + 1, batch, N, C]` and `masks`
        `[iters + 1, batch, N]` (index 0 is the starting set), `inner_losses`
        and `grad_norms` `[iters, batch]` (per-sample inner objective before
        each step and the norm of its unclipped set gradient), and `steps`
        `[batch]` int32, the steps each sample took (`iters` unless
        `tolerance` stopped it earlier).

    Example:

    >>> from dspn_tf.encoders import FSEncoder
    >>> decoder = DSPN(FSEncoder(dim=16, latent=8), set_size=5, set_channels=2, iters=3)
    >>> decoder(tf.zeros([4, 8]))["sets"].shape
    TensorShape([4, 4, 5, 2])
    """

    def __init__(
        self,
        encoder,
        set_size,
        set_channels,
        iters=10,
        lr=25.0,
        *,
        gradient="unrolled",
        momentum=0.0,
        nesterov=True,
        clip=None,
        inner_loss="huber",
        starting_set="learned",
        start_regularizer=0.0,
        tolerance=None,
        seed=None,
        **kwargs,
    ):
        # The whole inner loop runs in the variable dtype (float32) under a
        # mixed-precision policy (see `_float32_compute`), so the decoder's own
        # policy is the variable dtype: a mixed one would make Keras read its
        # starting set in the compute dtype when it is called on its own.
        policy = keras.dtype_policies.get(kwargs.get("dtype") or keras.config.dtype_policy())
        kwargs["dtype"] = policy.variable_dtype
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if not isinstance(encoder, keras.layers.Layer):
            raise ValueError(f"DSPN: `encoder` must be a Keras layer; received {type(encoder).__name__}.")
        checks.positive_ints("DSPN", set_size=set_size, set_channels=set_channels)
        _check_iters(iters)
        checks.choice("DSPN", "gradient", gradient, GRADIENTS)
        checks.choice("DSPN", "inner_loss", inner_loss, INNER_LOSSES)
        checks.choice("DSPN", "starting_set", starting_set, STARTING_SETS)
        checks.positive_float("DSPN", lr=lr)
        _check_inner_options(momentum, start_regularizer, clip, tolerance, seed)
        self.encoder = encoder
        self.set_size = set_size
        self.set_channels = set_channels
        self.iters = iters
        self.lr = float(lr)
        self.gradient = gradient
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.clip = None if clip is None else float(clip)
        self.inner_loss = inner_loss
        self.starting_set_kind = starting_set
        self.start_regularizer = float(start_regularizer)
        self.tolerance = None if tolerance is None else float(tolerance)
        self.seed = seed
        self.latent = None

    def build(self, input_shape):
        self.latent = input_shape[-1]
        # With implicit gradients the start is reached only through the regulariser.
        start_trainable = self.gradient == "unrolled" or self.start_regularizer > 0
        if self.starting_set_kind == "learned":
            self.starting_set = self.add_weight(
                name="starting_set",
                shape=(1, self.set_size, self.set_channels),
                initializer=keras.initializers.RandomUniform(0.0, 1.0),
                trainable=start_trainable,
            )
        self.starting_mask = self.add_weight(
            name="starting_mask",
            shape=(1, self.set_size),
            initializer=keras.initializers.Constant(0.5),
            trainable=start_trainable,
        )
        if not self.encoder.built:
            self.encoder.build((None, self.set_size, self.set_channels))

    def _start(self, z, training):
        batch = tf.shape(z)[0]
        shape = [batch, self.set_size, self.set_channels]
        if self.starting_set_kind == "learned":
            start_set = tf.broadcast_to(tf.convert_to_tensor(self.starting_set), shape)  # Shape: [batch, N, C].
        elif training:
            start_set = tf.random.normal(shape, stddev=RANDOM_START_STDDEV, seed=self.seed, dtype=z.dtype)
        else:
            # Stateless: the same seed and batch give the same starting sets on every call.
            seed = tf.constant([self.seed or 0, 0], tf.int64)
            start_set = tf.random.stateless_normal(shape, seed=seed, stddev=RANDOM_START_STDDEV, dtype=z.dtype)
        start_mask = tf.broadcast_to(tf.convert_to_tensor(self.starting_mask), [batch, self.set_size])
        return start_set, tf.clip_by_value(start_mask, 0.0, 1.0)

    def objective(self, z, current_set, current_mask, start, training=False):
        """Per-sample inner objective `[batch]` of a set and mask (start: `(set_0, mask_0)`)."""
        with _float32_compute(self.encoder):
            predicted = tf.cast(self.encoder(current_set, current_mask, training=training), z.dtype)
        diff = predicted - z  # Shape: [batch, latent].
        mismatch = huber(diff) if self.inner_loss == "huber" else 0.5 * tf.square(diff)
        per_sample = tf.reduce_mean(mismatch, axis=-1)  # Shape: [batch].
        if self.start_regularizer > 0:
            start_set, start_mask = start
            distance = tf.reduce_sum(tf.square(current_set - start_set), axis=[1, 2])
            distance += tf.reduce_sum(tf.square(current_mask - start_mask), axis=1)
            per_sample += self.start_regularizer * 0.5 * distance
        return per_sample

    def inner_gradient(self, z, current_set, current_mask, start, training=False):
        """Per-sample objective `[batch]` and its gradients with respect to the set and the mask."""
        with tf.GradientTape() as tape:
            tape.watch(current_set)
            tape.watch(current_mask)
            per_sample = self.objective(z, current_set, current_mask, start, training)
            loss = tf.reduce_sum(per_sample)  # Samples are independent, so this gives per-sample gradients.
        set_grad, mask_grad = tape.gradient(loss, [current_set, current_mask])
        return per_sample, set_grad, mask_grad

    def _step(self, z, state, start, training, gradients=None):
        """One inner step of the loop state `(set, mask, set velocity, mask velocity, active, steps)`.

        `gradients` are `inner_gradient`'s results at the state's set, if
        already computed. Returns the new state, the per-sample objective
        before the step and the norm of the unclipped set gradient.
        """
        current_set, current_mask, set_velocity, mask_velocity, active, steps = state
        if gradients is None:
            gradients = self.inner_gradient(z, current_set, current_mask, start, training)
        per_sample, set_grad, mask_grad = gradients
        grad_norm = tf.norm(tf.reshape(set_grad, [tf.shape(set_grad)[0], -1]), axis=1)  # Shape: [batch].
        if self.clip is not None:
            total = tf.sqrt(
                tf.reduce_sum(tf.square(set_grad), axis=[1, 2]) + tf.reduce_sum(tf.square(mask_grad), axis=1)
            )
            scale = tf.stop_gradient(tf.minimum(1.0, self.clip / (total + _CLIP_EPSILON)))  # Shape: [batch].
            set_grad = set_grad * scale[:, None, None]
            mask_grad = mask_grad * scale[:, None]
        if self.momentum > 0:
            new_set_velocity = self.momentum * set_velocity + set_grad
            new_mask_velocity = self.momentum * mask_velocity + mask_grad
            if self.nesterov:
                set_update = set_grad + self.momentum * new_set_velocity
                mask_update = mask_grad + self.momentum * new_mask_velocity
            else:
                set_update, mask_update = new_set_velocity, new_mask_velocity
        else:
            new_set_velocity, new_mask_velocity = set_velocity, mask_velocity
            set_update, mask_update = set_grad, mask_grad
        new_set = current_set - self.lr * set_update
        new_mask = tf.clip_by_value(current_mask - self.lr * mask_update, 0.0, 1.0)
        if self.tolerance is not None:
            # A stopped sample keeps its set, mask and velocity from here on.
            active = tf.logical_and(active, per_sample >= self.tolerance)
            keep_set, keep_mask = active[:, None, None], active[:, None]
            new_set = tf.where(keep_set, new_set, current_set)
            new_mask = tf.where(keep_mask, new_mask, current_mask)
            new_set_velocity = tf.where(keep_set, new_set_velocity, set_velocity)
            new_mask_velocity = tf.where(keep_mask, new_mask_velocity, mask_velocity)
        steps = steps + tf.cast(active, tf.int32)
        return (new_set, new_mask, new_set_velocity, new_mask_velocity, active, steps), per_sample, grad_norm

    def _initial_state(self, z, training):
        start_set, start_mask = self._start(z, training)
        batch = tf.shape(z)[0]
        state = (
            start_set,
            start_mask,
            tf.zeros_like(start_set),
            tf.zeros_like(start_mask),
            tf.ones([batch], tf.bool),
            tf.zeros([batch], tf.int32),
        )
        return state, (start_set, start_mask)

    def call(self, inputs, iters=None, training=False):
        z = tf.cast(inputs, self.variable_dtype)  # The inner loop runs in float32 under mixed precision.
        checks.embedding("DSPN", z, self.latent)
        if iters is None:
            iters = self.iters
        static = isinstance(iters, int)
        if static:
            _check_iters(iters)
        else:
            iters = _checked_tensor_iters(iters)
        state, start = self._initial_state(z, training)
        if training and self.gradient == "implicit":
            return self._implicit(z, state, start, iters, training)
        if static:
            return self._unrolled(z, state, start, iters, training)
        if training:
            raise ValueError(
                "DSPN: unrolled training differentiates through every inner step, which needs a Python int "
                f"`iters`; received a tensor ({iters!r}). Pass an int, or use gradient='implicit'."
            )
        return self._looped(z, state, start, iters, training)

    def _unrolled(self, z, state, start, iters, training):
        records = [(state[0], state[1], None, None)]
        for _ in range(iters):
            if not training:
                # At inference nothing needs the graph across steps.
                state = tf.nest.map_structure(tf.stop_gradient, state)
            state, loss, norm = self._step(z, state, start, training)
            records.append((state[0], state[1], loss, norm))
        return self._output(z, records, state[5])

    def _output(self, z, records, steps):
        sets, masks, losses, norms = zip(*records)
        empty = tf.zeros([0, tf.shape(z)[0]], z.dtype)
        return decoder_output(
            tf.stack(sets),
            tf.stack(masks),
            tf.stack(losses[1:]) if len(records) > 1 else empty,
            tf.stack(norms[1:]) if len(records) > 1 else empty,
            steps,
        )

    def _implicit(self, z, state, start, iters, training):
        """iDSPN training: `iters - 1` steps without a graph, then one differentiable step."""
        if isinstance(iters, int) and iters == 0:
            return self._output(z, [(state[0], state[1], None, None)], state[5])
        if not isinstance(iters, int):
            check = tf.debugging.assert_positive(iters, message="DSPN: implicit training needs `iters` >= 1")
            with tf.control_dependencies([check]):
                iters = tf.identity(iters)
        out, state = self._looped(z, state, start, iters - 1, training, return_state=True)
        # Nothing of the graph loop is on a gradient path, so TF builds no backward loop for it (a
        # zero gradient flowing into the stacked steps would still make it run one).
        out, state = tf.nest.map_structure(tf.stop_gradient, (out, state))
        # The gradient: one plain step of size lr from the detached previous set.
        per_sample, set_grad, mask_grad = self.inner_gradient(z, state[0], state[1], start, training)
        plain_set = state[0] - self.lr * set_grad
        plain_mask = tf.clip_by_value(state[1] - self.lr * mask_grad, 0.0, 1.0)
        # The value: the forward step with momentum, clipping and early stopping.
        detached = tf.nest.map_structure(tf.stop_gradient, (per_sample, set_grad, mask_grad))
        next_state, loss, norm = self._step(z, state, start, training, gradients=detached)
        if self.momentum == 0 and self.clip is None and self.tolerance is None:
            final_set, final_mask = plain_set, plain_mask  # The same step.
        else:
            final_set = tf.stop_gradient(next_state[0]) + (plain_set - tf.stop_gradient(plain_set))
            final_mask = tf.stop_gradient(next_state[1]) + (plain_mask - tf.stop_gradient(plain_mask))
        return decoder_output(
            tf.concat([out["sets"], final_set[None]], axis=0),
            tf.concat([out["masks"], final_mask[None]], axis=0),
            tf.concat([out["inner_losses"], tf.stop_gradient(loss)[None]], axis=0),
            tf.concat([out["grad_norms"], tf.stop_gradient(norm)[None]], axis=0),
            next_state[5],
        )

    def _looped(self, z, state, start, iters, training, return_state=False):
        """The inner loop as a graph `while_loop` (no graph is kept across steps)."""
        iters = tf.convert_to_tensor(iters, tf.int32)
        start_set, start_mask = state[0], state[1]
        sets = tf.TensorArray(z.dtype, size=iters + 1, element_shape=start_set.shape).write(0, start_set)
        masks = tf.TensorArray(z.dtype, size=iters + 1, element_shape=start_mask.shape).write(0, start_mask)
        losses = tf.TensorArray(z.dtype, size=iters, element_shape=z.shape[:1])
        norms = tf.TensorArray(z.dtype, size=iters, element_shape=z.shape[:1])
        start = tf.nest.map_structure(tf.stop_gradient, start)

        def body(t, state, sets, masks, losses, norms):
            state, loss, norm = self._step(z, tf.nest.map_structure(tf.stop_gradient, state), start, training)
            return (
                t + 1,
                state,
                sets.write(t + 1, state[0]),
                masks.write(t + 1, state[1]),
                losses.write(t, loss),
                norms.write(t, norm),
            )

        def more(t, state, *_):
            if self.tolerance is None:
                return t < iters
            # Every sample has stopped: the remaining steps would change nothing.
            return tf.logical_and(t < iters, tf.reduce_any(state[4]))

        t, state, sets, masks, losses, norms = tf.while_loop(
            more, body, (tf.constant(0), state, sets, masks, losses, norms)
        )
        batch = tf.shape(z)[0]

        def padded(array, written, total):
            if self.tolerance is None:
                return array.stack()
            # Steps skipped after every sample stopped repeat the last one, as an unrolled loop would.
            values = array.gather(tf.range(written))
            tail = tf.repeat(values[-1:], total - written, axis=0)
            return tf.concat([values, tail], axis=0)

        def per_step(array):
            # Stacking zero elements of an unknown batch size fails, so an
            # iters=0 call gets an explicit empty [0, batch] tensor.
            return tf.cond(t > 0, lambda: padded(array, t, iters), lambda: tf.zeros([0, batch], z.dtype))

        out = decoder_output(
            padded(sets, t + 1, iters + 1), padded(masks, t + 1, iters + 1), per_step(losses), per_step(norms), state[5]
        )
        return (out, state) if return_state else out

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "set_size": self.set_size,
            "set_channels": self.set_channels,
            "iters": self.iters,
            "lr": self.lr,
            "gradient": self.gradient,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "clip": self.clip,
            "inner_loss": self.inner_loss,
            "starting_set": self.starting_set_kind,
            "start_regularizer": self.start_regularizer,
            "tolerance": self.tolerance,
            "seed": self.seed,
        }


@contextlib.contextmanager
def _float32_compute(encoder):
    """Makes a mixed-precision encoder and its sub-layers compute in their variable dtype.

    The inner gradient is ill-conditioned in low precision: at set-MNIST size
    on untrained weights, bfloat16 compute gives it a 13.5 % relative error
    (rounding only the set to bfloat16 already moves it by 6 %, as ranks in
    FSPool and ReLU gates change), and float16 flushes 29 % of its entries,
    of order 1e-7, to zero. So the encoder evaluates the inner objective in
    float32; elsewhere (target sets, image encoders) it keeps the policy.
    Layers read their compute dtype while tracing, so this costs nothing at
    run time.
    """
    layers = [encoder, *encoder._flatten_layers(include_self=False)]
    mixed = [layer for layer in layers if layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype]
    saved = [layer.dtype_policy for layer in mixed]
    for layer in mixed:
        layer.dtype_policy = keras.DTypePolicy(layer.dtype_policy.variable_dtype)
    try:
        yield
    finally:
        for layer, policy in zip(mixed, saved):
            layer.dtype_policy = policy


def _check_inner_options(momentum, start_regularizer, clip, tolerance, seed):
    """Raises ValueError naming the first out-of-range inner-loop option of `DSPN`."""
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"DSPN: `momentum` must be in [0, 1); received momentum={momentum!r}.")
    if float(start_regularizer) < 0.0:
        raise ValueError(f"DSPN: `start_regularizer` must be >= 0; received start_regularizer={start_regularizer!r}.")
    if clip is not None:
        checks.positive_float("DSPN", clip=clip)
    if tolerance is not None:
        checks.positive_float("DSPN", tolerance=tolerance)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"DSPN: `seed` must be an integer or None; received seed={seed!r}.")


def _check_iters(iters):
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"DSPN: `iters` must be an integer >= 0; received iters={iters!r}.")


def _checked_tensor_iters(iters):
    iters = tf.convert_to_tensor(iters, tf.int32)
    if iters.shape.rank != 0:
        raise ValueError(f"DSPN: `iters` must be a scalar; received shape {iters.shape}.")
    static = tf.get_static_value(iters)
    if static is not None and static < 0:
        # Known now (eager, or a constant in a graph): the same ValueError as a Python int.
        raise ValueError(f"DSPN: `iters` must be an integer >= 0; received iters={int(static)}.")
    check = tf.debugging.assert_non_negative(iters, message="DSPN: `iters` must be >= 0")
    with tf.control_dependencies([check]):
        return tf.identity(iters)
