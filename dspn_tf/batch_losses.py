"""The losses of a whole model on a batch, and the gradients of one replica's share of a step.

`per_sample_losses` runs a model on a batch and scores it as its `LossSettings`
say; `loss_and_gradients` is the update that both `dspn_tf.training.Trainer` and
`Model.fit` (`dspn_tf.models`) apply; `check_settings` refuses settings a model
cannot train with.
"""

import tensorflow as tf

from dspn_tf import losses as losses_lib


def check_settings(model, settings):
    """Refuses settings a model cannot train with.

    Raises:
        ValueError: for a set loss over all steps with a DSPN whose gradient is implicit.
    """
    decoder = getattr(model, "decoder", None)
    if settings.all_steps and getattr(decoder, "gradient", "unrolled") == "implicit":
        raise ValueError(
            "A DSPN with gradient='implicit' carries gradients on its final step only, so the set loss cannot "
            "average over all steps; use LossSettings(all_steps=False) (flag --noloss_all_steps)."
        )


def per_sample_losses(model, batch, settings, *, training, iters=None):
    """Runs the model on a batch and scores it per sample.

    A model with set normalisation (`set_scaling`, `dspn_tf.models`) is scored
    in its normalised units: its normalised outputs against the normalised
    target set (and the representation loss encodes the normalised target).

    Args:
        model: A `SetAutoEncoder`, `VectorToSet` or `ImageToSet`.
        batch: A dict with the model's inputs, `settings.set_key` and `mask`.
        settings: `LossSettings`.
        training: Run the model in training mode.
        iters: Inner steps of a DSPN decoder (default `settings.iters`, else the decoder's).

    Returns:
        `(outputs, losses)`: the model's output dict (sets in the model's
        units) and a dict of `[batch]` tensors `loss`, `set_loss` and `repr_loss`.

    Raises:
        KeyError: naming `settings.set_key` and the batch's keys if the target set is missing.
    """
    if settings.set_key not in batch:
        raise KeyError(
            f"LossSettings: the batch has no target set {settings.set_key!r} (set_key); its keys are {sorted(batch)}."
        )
    iters = settings.iters if iters is None else iters
    inputs = model.inputs_of(batch, settings.set_key)
    scaling = getattr(model, "set_scaling", None)
    if scaling is None:
        outputs = model(inputs, iters=iters, training=training)
    else:  # Predictions and targets are compared in the model's normalised units.
        outputs = model(inputs, iters=iters, training=training, normalized=True)
    loss_fn = losses_lib.chamfer_loss if settings.loss == "chamfer" else losses_lib.hungarian_loss
    # Losses in float32 also when a mixed-precision decoder outputs float16/bfloat16,
    # and in float64 for a float64 model (whose gradients a float32 loss would round).
    dtype = tf.float64 if outputs["sets"].dtype == tf.float64 else tf.float32
    sets, masks = tf.cast(outputs["sets"], dtype), tf.cast(outputs["masks"], dtype)
    target_set, target_mask = tf.cast(batch[settings.set_key], dtype), tf.cast(batch["mask"], dtype)
    if scaling is not None:
        target_set = scaling.normalize(target_set, target_mask)
    kwargs = {"solver": settings.solver} if settings.loss == "hungarian" else {}
    if not settings.score_mask:
        kwargs["score_mask"] = False
    if settings.loss == "numbering":
        set_loss = losses_lib.numbering_loss(
            sets,
            target_set,
            tf.cast(_input_set(model, batch), dtype),
            all_steps=settings.all_steps,
            reduction="none",
            solver=settings.solver,
        )
    else:
        set_loss = loss_fn(
            sets, masks, target_set, target_mask, all_steps=settings.all_steps, reduction="none", **kwargs
        )
    repr_loss = tf.zeros_like(set_loss)
    encoder = model.repr_encoder
    if settings.repr_lambda > 0 and encoder is not None:
        # Neither side is stop-gradiented: this trains the image encoder
        # towards g(target) and g towards the image embedding (docs/algorithm.md §7).
        target_z = tf.cast(encoder(target_set, target_mask, training=training), dtype)
        repr_loss = losses_lib.repr_loss(target_z, tf.cast(outputs["z"], dtype), reduction="none")
    return outputs, {"loss": set_loss + settings.repr_lambda * repr_loss, "set_loss": set_loss, "repr_loss": repr_loss}


def _input_set(model, batch):
    """The class one-hots of the numbering loss: the model's input set."""
    if not hasattr(model, "input_set_of"):
        raise ValueError(
            f"LossSettings: loss 'numbering' needs a model whose input set holds the class one-hots (a SetToSet); "
            f"received a {type(model).__name__}."
        )
    return model.input_set_of(batch)


def loss_and_gradients(model, optimizer, batch, settings, *, global_batch_size, iters=None):
    """One replica's forward pass, losses and gradients: the update both `Trainer` and `Model.fit` apply.

    The per-sample losses are summed and divided by `global_batch_size`, so the
    gradients summed over replicas are those of the global batch mean.

    Args:
        model: A `SetAutoEncoder` or `ImageToSet`.
        optimizer: The Keras optimizer (its `scale_loss` applies a mixed_float16 loss scale).
        batch: This replica's batch dict.
        settings: `LossSettings`.
        global_batch_size: Examples per step over all replicas (a number or scalar tensor).
        iters: Inner steps of a DSPN decoder (see `per_sample_losses`).

    Returns:
        `(outputs, losses, grads)`: the model's outputs, the per-sample loss
        dict of `per_sample_losses` and the gradients of `model.trainable_variables`.
    """
    with tf.GradientTape() as tape:
        outputs, losses = per_sample_losses(model, batch, settings, training=True, iters=iters)
        total = tf.reduce_sum(losses["loss"])
        scaled = total / tf.cast(global_batch_size, total.dtype)
        # A keras.optimizers.LossScaleOptimizer (mixed_float16) scales the loss
        # here and unscales the gradients in `apply`; other optimizers return it unchanged.
        scaled = optimizer.scale_loss(scaled)
    return outputs, losses, tape.gradient(scaled, model.trainable_variables)
