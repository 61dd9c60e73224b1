"""The DSPN decoder (Algorithm 1 of the DSPN paper) and iDSPN's inner-loop options.

A vector z is decoded into a set by gradient descent on a starting set so
that the set encoder's embedding of the set approaches z. Each step is
permutation-equivariant. By default training differentiates through every
step (the DSPN paper); `gradient="implicit"` differentiates only the last
step from the detached previous set (iDSPN, Zhang et al., ICLR 2022).
"""

import contextlib
import numbers

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf.inner import objectives, optimizers, projections, starts
from dspn_tf.inner import stopping as stopping_rules
from dspn_tf.inner.config import GRADIENTS, INNER_LOSSES, STARTING_SETS, InnerLoopConfig
from dspn_tf.inner.starts import RANDOM_START_STDDEV
from dspn_tf.inner.state import LoopState, initial_state

__all__ = ["DSPN", "GRADIENTS", "INNER_LOSSES", "RANDOM_START_STDDEV", "STARTING_SETS", "decoder_output"]


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

    The loop is made of parts (`dspn_tf.inner`, docs/algorithm.md §4): the
    objective, the inner optimiser (a chain of transforms such as clipping
    and momentum), the projection after every step, the stopping rule and
    the starting set. Each can be passed as an object; the keywords below are
    shorthands for the built-in ones, as Keras accepts `activation="relu"`.

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
            first `iters - 1` steps keep no graph; the last step's value is
            that of a full `step` (every part applies), and its outer
            gradient is that of one plain step `Y_T = stop(Y_{T-1}) - lr * dL/dY`
            (projected like every step) from the detached previous set, with
            respect to every weight and to z. Memory and backward cost do not
            grow with `iters`. Only the final step carries gradients, so a
            training loss must score the final step only. The starting set
            then gets gradient only through objective terms that use it (the
            start regulariser); without one, its weights are created
            non-trainable, so that no optimizer sees variables without gradients.
        momentum: Shorthand: momentum of the inner steps, in [0, 1)
            (iDSPN: 0.9). The velocity starts at zero.
        nesterov: Shorthand: with `momentum > 0`, take Nesterov steps (iDSPN)
            rather than heavy-ball ones.
        clip: Shorthand: if set, each sample's inner gradient is scaled down
            to at most this L2 norm, taken over all of that sample's set and
            mask entries, before the step (iDSPN: 10 on CLEVR). The scale
            factor is a constant to backpropagation, as in iDSPN.
        inner_loss: Shorthand: `"huber"` (the paper: Huber with delta 1,
            latent mean) or `"mse"` (iDSPN: 0.5 * squared error, latent mean).
        starting_set: `"learned"` (the paper), `"random"` (every sample
            starts from its own N(0, 0.1²) set, iDSPN; the mask starts from
            the learned starting mask), `"mlp"` (an MLP head predicts each
            sample's start from z; `dspn_tf.inner.MLPStart`), or a
            `dspn_tf.inner.StartingSet`.
        start_regularizer: Shorthand: weight of
            `0.5 * ||[Y, m] - [Y_0, m_0]||²` (summed over the sample's set and
            mask entries) added to each sample's inner objective, which keeps
            the set near its start (iDSPN's random-set auto-encoder: 0.1 on a
            mean over entries, i.e. 0.1 / (N * (C + 1)) here). 0 disables it.
        tolerance: Shorthand: if set, a sample whose inner objective is below
            this value stops moving (per-sample early stopping); the loop
            still runs at most `iters` steps, and a graph loop (tensor
            `iters`) ends as soon as every sample has stopped.
        seed: Seed of the random starting sets. At inference (`training=False`)
            the same seed and inputs give the same outputs, which makes
            evaluation and serving reproducible; in training every call
            draws new noise.
        objective: A `dspn_tf.inner.Objective` (or any callable
            `(embedding, z, set, mask, start) -> [batch]` with `get_config`),
            in place of `inner_loss` / `start_regularizer`.
        optimizer: A `dspn_tf.inner.InnerTransform` (e.g.
            `chain(ClipPerSample(10), Momentum(0.9))`), in place of
            `momentum` / `nesterov` / `clip`.
        projection: A `dspn_tf.inner.Projection` (or its name) applied to the
            start and after every step (default `ClipMask`: the mask to
            [0, 1]; `"full_mask"`: `FullMask`, the mask held at 1, for sets
            without padding).
        stopping: A `dspn_tf.inner.StoppingRule`, in place of `tolerance`.

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
        the stopping rule stopped it earlier).

    Example:

    >>> from dspn_tf.encoders import FSEncoder
    >>> decoder = DSPN(FSEncoder(dim=16, latent=8), set_size=5, set_channels=2, iters=3)
    >>> decoder(tf.zeros([4, 8]))["sets"].shape
    TensorShape([4, 4, 5, 2])
    """

    # Eager inference calls run the graph loop of an exported signature (`_GraphLoops`); a
    # subclass whose objective reads per-call state other than `z` turns this off.
    _graph_loop_when_eager = True

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
        objective=None,
        optimizer=None,
        projection=None,
        stopping=None,
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
        # The shorthand keywords are checked by the one rule set they share with the flags.
        options = InnerLoopConfig(
            iters=iters,
            lr=_as_float(lr),
            gradient=gradient,
            momentum=_as_float(momentum),
            nesterov=bool(nesterov),
            clip=_as_float(clip),
            inner_loss=inner_loss,
            starting_set=starting_set if isinstance(starting_set, str) else "learned",
            start_regularizer=_as_float(start_regularizer),
            tolerance=_as_float(tolerance),
            seed=seed,
        )
        _only_one("objective", objective, inner_loss != "huber" or options.start_regularizer > 0)
        _only_one("optimizer", optimizer, options.momentum > 0 or options.clip is not None)
        _only_one("stopping", stopping, options.tolerance is not None)
        self.encoder = encoder
        self.set_size = set_size
        self.set_channels = set_channels
        self.iters = iters
        self.lr = options.lr
        self.gradient = gradient
        self.seed = seed
        self.inner_objective = objectives.get(
            inner_loss if objective is None else objective, start_regularizer=options.start_regularizer
        )
        self.inner_optimizer = (
            optimizers.from_options(options.momentum, options.nesterov, options.clip)
            if optimizer is None
            else optimizers.get(optimizer)
        )
        self.projection = projections.get(projection)
        self.stopping = stopping_rules.get(options.tolerance if stopping is None else stopping)
        self.start = starts.get(starting_set, seed=seed)
        self.latent = None
        self._eager_inference = _GraphLoops(self)

    def build(self, input_shape):
        self.latent = input_shape[-1]
        # With implicit gradients the start is reached only through terms of the objective that use it.
        start_trainable = self.gradient == "unrolled" or bool(getattr(self.inner_objective, "terms", True))
        self.start.build(self, self.latent, start_trainable)
        if getattr(self.projection, "holds_mask", False) and hasattr(self, "starting_mask"):
            # The projection replaces the mask, so nothing reaches the learned starting mask.
            self.starting_mask.trainable = False
        if not self.encoder.built:
            self.encoder.build((None, self.set_size, self.set_channels))

    def objective(self, z, current_set, current_mask, start, training=False):
        """Per-sample inner objective `[batch]` of a set and mask (start: `(set_0, mask_0)`)."""
        with _float32_compute(self.encoder):
            embedding = tf.cast(self.encoder(current_set, current_mask, training=training), z.dtype)
        return self.inner_objective(embedding, z, current_set, current_mask, start)

    def inner_gradient(self, z, current_set, current_mask, start, training=False):
        """Per-sample objective `[batch]` and its gradients with respect to the set and the mask."""
        with tf.GradientTape() as tape:
            tape.watch(current_set)
            tape.watch(current_mask)
            per_sample = self.objective(z, current_set, current_mask, start, training)
            loss = tf.reduce_sum(per_sample)  # Samples are independent, so this gives per-sample gradients.
        set_grad, mask_grad = tape.gradient(loss, [current_set, current_mask])
        return per_sample, set_grad, mask_grad

    def step(self, z, state, start, training=False, gradients=None, *, plain=False):
        """One inner step: gradients, the optimiser's directions, the update, the projection, the stopping rule.

        Every loop (unrolled, graph and implicit) steps through this function.

        Args:
            z: Target embeddings `[batch, latent]`.
            state: The `LoopState` before the step.
            start: `(set_0, mask_0)`, the projected starting set and mask.
            training: Passed to the encoder.
            gradients: `inner_gradient`'s results at `state`, if already computed.
            plain: Step along the gradient itself, with no optimiser and no
                stopping (the step whose derivative iDSPN's implicit gradient uses).

        Returns:
            The new `LoopState`, the per-sample objective before the step and
            the norm of its unclipped set gradient (both `[batch]`).
        """
        if gradients is None:
            gradients = self.inner_gradient(z, state.set, state.mask, start, training)
        per_sample, set_grad, mask_grad = gradients
        grad_norm = tf.norm(tf.reshape(set_grad, [tf.shape(set_grad)[0], -1]), axis=1)  # Shape: [batch].
        optimizer, stopping = (_PLAIN_STEPS, _NEVER) if plain else (self.inner_optimizer, self.stopping)
        slots = () if plain else state.slots
        (set_update, mask_update), slots = optimizer.update((set_grad, mask_grad), slots)
        new_set, new_mask = self.projection(state.set - self.lr * set_update, state.mask - self.lr * mask_update)
        active = stopping.update(state.active, per_sample)
        new_state = LoopState(new_set, new_mask, slots, active, state.steps + tf.cast(active, tf.int32))
        if stopping.can_stop:
            # A stopped sample keeps its set, mask and optimiser state from here on.
            moved = (new_state.set, new_state.mask, new_state.slots)
            kept = _freeze(active, moved, (state.set, state.mask, state.slots))
            new_state = new_state._replace(set=kept[0], mask=kept[1], slots=kept[2])
        return new_state, per_sample, grad_norm

    def _initial_state(self, z, training):
        start = self.projection(*self.start(self, z, training))
        return initial_state(*start, self.inner_optimizer.init(*start)), start

    def call(self, inputs, iters=None, training=False):
        z = tf.cast(inputs, self.variable_dtype)  # The inner loop runs in float32 under mixed precision.
        checks.embedding("DSPN", z, self.latent)
        if iters is None:
            iters = self.iters
        static = isinstance(iters, int)
        if static:
            InnerLoopConfig.check("iters", iters, owner="DSPN")
        else:
            iters = _checked_tensor_iters(iters)
        if not training and tf.executing_eagerly() and self._graph_loop_when_eager:
            # Called eagerly for predictions: run the graph loop with the signature shapes of an
            # exported model, so that eager calls, `predict` and a served SavedModel give the
            # same numbers (eager kernels round some sums in another order than a graph, and
            # the inner loop can amplify a last-bit difference at a near-tie of FSPool's sort).
            return self._eager_inference(z, iters)
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
        records = [(state.set, state.mask, None, None)]
        for _ in range(iters):
            if not training:
                # At inference nothing needs the graph across steps.
                state = tf.nest.map_structure(tf.stop_gradient, state)
            state, loss, norm = self.step(z, state, start, training)
            records.append((state.set, state.mask, loss, norm))
        return self._output(z, records, state.steps)

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
        """iDSPN training: `iters - 1` steps without a graph, then one differentiable step.

        The last step's value is that of `step` (every part applies); its
        gradient is that of the plain step from the same detached set.
        """
        if isinstance(iters, int) and iters == 0:
            return self._output(z, [(state.set, state.mask, None, None)], state.steps)
        if not isinstance(iters, int):
            check = tf.debugging.assert_positive(iters, message="DSPN: implicit training needs `iters` >= 1")
            with tf.control_dependencies([check]):
                iters = tf.identity(iters)
        out, state = self._looped(z, state, start, iters - 1, training, return_state=True)
        # Nothing of the graph loop is on a gradient path, so TF builds no backward loop for it (a
        # zero gradient flowing into the stacked steps would still make it run one).
        out, state = tf.nest.map_structure(tf.stop_gradient, (out, state))
        gradients = self.inner_gradient(z, state.set, state.mask, start, training)
        plain, _, _ = self.step(z, state, start, training, gradients, plain=True)
        forward, loss, norm = self.step(z, state, start, training, tf.nest.map_structure(tf.stop_gradient, gradients))
        # The value of the forward step, the gradient of the plain one.
        final_set, final_mask = (
            tf.stop_gradient(value) + (carrier - tf.stop_gradient(carrier))
            for value, carrier in ((forward.set, plain.set), (forward.mask, plain.mask))
        )
        return decoder_output(
            tf.concat([out["sets"], final_set[None]], axis=0),
            tf.concat([out["masks"], final_mask[None]], axis=0),
            tf.concat([out["inner_losses"], tf.stop_gradient(loss)[None]], axis=0),
            tf.concat([out["grad_norms"], tf.stop_gradient(norm)[None]], axis=0),
            forward.steps,
        )

    def _looped(self, z, state, start, iters, training, return_state=False):
        """The inner loop as a graph `while_loop` (no graph is kept across steps)."""
        iters = tf.convert_to_tensor(iters, tf.int32)
        sets = tf.TensorArray(z.dtype, size=iters + 1, element_shape=state.set.shape).write(0, state.set)
        masks = tf.TensorArray(z.dtype, size=iters + 1, element_shape=state.mask.shape).write(0, state.mask)
        losses = tf.TensorArray(z.dtype, size=iters, element_shape=z.shape[:1])
        norms = tf.TensorArray(z.dtype, size=iters, element_shape=z.shape[:1])
        start = tf.nest.map_structure(tf.stop_gradient, start)
        can_stop = self.stopping.can_stop

        def body(t, state, sets, masks, losses, norms):
            state, loss, norm = self.step(z, tf.nest.map_structure(tf.stop_gradient, state), start, training)
            return (
                t + 1,
                state,
                sets.write(t + 1, state.set),
                masks.write(t + 1, state.mask),
                losses.write(t, loss),
                norms.write(t, norm),
            )

        def more(t, state, *_):
            if not can_stop:
                return t < iters
            # Every sample has stopped: the remaining steps would change nothing.
            return tf.logical_and(t < iters, tf.reduce_any(state.active))

        t, state, sets, masks, losses, norms = tf.while_loop(
            more, body, (tf.constant(0), state, sets, masks, losses, norms)
        )
        batch = tf.shape(z)[0]

        def padded(array, written, total):
            if not can_stop:
                return array.stack()
            # Steps skipped after every sample stopped repeat the last one, as an unrolled loop would. The
            # unwritten entries stack as zeros and are never selected; the index has the static length
            # `total` (a gather of `range(written)` would not compile with XLA: `written` is known only
            # after the loop).
            return tf.gather(array.stack(), tf.minimum(tf.range(total), written - 1))

        def per_step(array):
            # Stacking zero elements of an unknown batch size fails, so an
            # iters=0 call gets an explicit empty [0, batch] tensor.
            return tf.cond(t > 0, lambda: padded(array, t, iters), lambda: tf.zeros([0, batch], z.dtype))

        out = decoder_output(
            padded(sets, t + 1, iters + 1),
            padded(masks, t + 1, iters + 1),
            per_step(losses),
            per_step(norms),
            state.steps,
        )
        return (out, state) if return_state else out

    def get_config(self):
        """The layer's config: today's shorthand keywords where a part has one, else the part's own config."""
        config = {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "set_size": self.set_size,
            "set_channels": self.set_channels,
            "iters": self.iters,
            "lr": self.lr,
            "gradient": self.gradient,
            "momentum": 0.0,
            "nesterov": True,
            "clip": None,
            "inner_loss": "huber",
            "starting_set": "learned",
            "start_regularizer": 0.0,
            "tolerance": None,
            "seed": self.seed,
        }
        parts = (
            ("optimizer", self.inner_optimizer, _optimizer_shorthand),
            ("objective", self.inner_objective, _objective_shorthand),
            ("stopping", self.stopping, _stopping_shorthand),
            ("projection", self.projection, lambda p: {} if type(p) is projections.ClipMask else None),
            ("starting_set", self.start, lambda s: _start_shorthand(s, self.seed)),
        )
        for key, part, shorthand in parts:
            keywords = shorthand(part)
            if keywords is None:
                config[key] = keras.saving.serialize_keras_object(part)
            else:
                config.update(keywords)
        return config


def _as_float(value):
    """A real number as a Python float (so NumPy scalars pass); anything else as it is, for the checks to name."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _only_one(name, part, shorthand_used):
    if part is not None and shorthand_used:
        raise ValueError(
            f"DSPN: pass either `{name}` or its shorthand keywords "
            "(optimizer: momentum / nesterov / clip; objective: inner_loss / start_regularizer; stopping: "
            "tolerance), not both."
        )


def _per_sample(flags, value):
    """`[batch]` bools reshaped to broadcast against `value` `[batch, ...]`."""
    return tf.reshape(flags, tf.concat([tf.shape(flags), tf.ones([tf.rank(value) - 1], tf.int32)], axis=0))


def _freeze(active, moved, kept):
    """`moved` where the sample is active, else `kept` (matching nests of `[batch, ...]` tensors)."""
    return tf.nest.map_structure(lambda new, old: tf.where(_per_sample(active, new), new, old), moved, kept)


_PLAIN_STEPS = optimizers.InnerOptimizer()
_NEVER = stopping_rules.Never()


def _optimizer_shorthand(optimizer):
    """`momentum` / `nesterov` / `clip` keywords of an optimiser `from_options` builds, else None."""
    if type(optimizer) is not optimizers.InnerOptimizer:
        return None
    kinds = [type(t) for t in optimizer.transforms]
    if kinds not in (
        [],
        [optimizers.ClipPerSample],
        [optimizers.Momentum],
        [optimizers.ClipPerSample, optimizers.Momentum],
    ):
        return None
    keywords = {"momentum": 0.0, "nesterov": True, "clip": None}
    for transform in optimizer.transforms:
        if isinstance(transform, optimizers.ClipPerSample):
            keywords["clip"] = transform.max_norm
        else:
            keywords.update(momentum=transform.beta, nesterov=transform.nesterov)
    return keywords


def _objective_shorthand(objective):
    """`inner_loss` / `start_regularizer` keywords of an objective `objectives.get` builds, else None."""
    if type(objective) is not objectives.Objective:
        return None
    terms = objective.terms
    if terms and (len(terms) > 1 or type(terms[0]) is not objectives.StartRegularizer):
        return None
    return {"inner_loss": objective.mismatch, "start_regularizer": terms[0].weight if terms else 0.0}


def _stopping_shorthand(rule):
    if type(rule) is stopping_rules.Never:
        return {"tolerance": None}
    if type(rule) is stopping_rules.Tolerance:
        return {"tolerance": rule.tolerance}
    return None


class _GraphLoops:
    """Inference calls of a DSPN made eagerly, run as the graph loop of an exported signature.

    One `tf.function` per embedding dtype, step size and set of parts, traced for a batch
    of unknown size and a scalar int32 `iters`, as `dspn_tf.export` traces it. A plain
    object (not a Keras or tf.Module attribute), so the functions are neither tracked nor
    saved with the model.
    """

    def __init__(self, decoder):
        self._decoder = decoder
        self._functions = {}

    def __call__(self, z, iters):
        decoder = self._decoder
        # What a trace bakes in: a decoder whose step size or parts were replaced traces anew.
        key = (z.dtype, decoder.lr, *map(id, self._parts()))
        function = self._functions.get(key)
        if function is None:

            def loop(z, iters):
                state, start = decoder._initial_state(z, False)
                return decoder._looped(z, state, start, iters, False)

            specs = [tf.TensorSpec([None, z.shape[-1]], z.dtype), tf.TensorSpec([], tf.int32)]
            function = self._functions[key] = tf.function(loop, input_signature=specs)
        return function(z, tf.cast(iters, tf.int32))

    def _parts(self):
        decoder = self._decoder
        return (decoder.inner_objective, decoder.inner_optimizer, decoder.projection, decoder.stopping, decoder.start)


def _start_shorthand(start, seed):
    name = starts.name_of(start)
    if name == "random" and start.seed != seed:
        return None
    return None if name is None else {"starting_set": name}


@contextlib.contextmanager
def _float32_compute(encoder):
    """Makes a mixed-precision encoder and its sub-layers compute in their variable dtype.

    The inner gradient is ill-conditioned in low precision (ranks in FSPool
    and ReLU gates change when the set is rounded; float16 flushes its small
    entries to zero; benchmarks/README.md has the measured errors), so the
    encoder evaluates the inner objective in float32; elsewhere (target sets,
    image encoders) it keeps the policy. Layers read their compute dtype while
    tracing, so this costs nothing at run time.
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
