"""Losses of a whole model on a batch, and the distributed train step.

The trainer side of the training loop (Orbit's StandardTrainer role): it owns the model, the
optimizer and the loss settings, and builds one `tf.function` train step. The
outer loop (steps, checkpoints, summaries, evaluation) lives in `train/`.
"""

import dataclasses

import tensorflow as tf

from dspn_tf import losses as losses_lib


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """How a batch is scored.

    Attributes:
        set_key: Key of the target set in a batch: "set" (set-MNIST), "state"
            or "boxes" (CLEVR).
        loss: "chamfer" or "hungarian".
        all_steps: Average the set loss over every decoder step (the paper's
            text; the reference does this for Chamfer) or score the last
            step only (the reference's Hungarian).
        repr_lambda: Weight of `huber(g(target) - z)` (DSPN with an image
            encoder: 0.1; 0 disables it).
        iters: Inner steps of a DSPN decoder when a batch is scored (None:
            the decoder's own `iters`); an `iters` passed to
            `per_sample_losses` (the loop's `--iters_schedule`) overrides it.
    """

    set_key: str = "set"
    loss: str = "chamfer"
    all_steps: bool = True
    repr_lambda: float = 0.0
    iters: int | None = None

    def __post_init__(self):
        if self.loss not in ("chamfer", "hungarian"):
            raise ValueError(f"LossSettings: `loss` must be 'chamfer' or 'hungarian'; received {self.loss!r}.")
        if self.repr_lambda < 0:
            raise ValueError(f"LossSettings: `repr_lambda` must be >= 0; received {self.repr_lambda}.")
        if self.iters is not None and (
            isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1
        ):
            raise ValueError(f"LossSettings: `iters` must be None or an int >= 1; received {self.iters!r}.")

    def get_config(self):
        """The settings as a plain dict (what `from_config` and a model's `get_config` hold)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config):
        """`LossSettings` from `get_config`'s dict; `None` gives the defaults, a `LossSettings` is returned as is.

        Raises:
            TypeError: if `config` is neither.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if not isinstance(config, dict):
            raise TypeError(f"LossSettings: expected a LossSettings or a dict; received {type(config).__name__}.")
        return cls(**config)


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

    Args:
        model: A `SetAutoEncoder` or `ImageToSet`.
        batch: A dict with the model's inputs, `settings.set_key` and `mask`.
        settings: `LossSettings`.
        training: Run the model in training mode.
        iters: Inner steps of a DSPN decoder (default `settings.iters`, else the decoder's).

    Returns:
        `(outputs, losses)`: the model's output dict and a dict of `[batch]`
        tensors `loss`, `set_loss` and `repr_loss`.

    Raises:
        KeyError: naming `settings.set_key` and the batch's keys if the target set is missing.
    """
    if settings.set_key not in batch:
        raise KeyError(
            f"LossSettings: the batch has no target set {settings.set_key!r} (set_key); its keys are {sorted(batch)}."
        )
    iters = settings.iters if iters is None else iters
    outputs = model(model.inputs_of(batch, settings.set_key), iters=iters, training=training)
    loss_fn = losses_lib.chamfer_loss if settings.loss == "chamfer" else losses_lib.hungarian_loss
    # Losses in float32 also when a mixed-precision decoder outputs float16/bfloat16,
    # and in float64 for a float64 model (whose gradients a float32 loss would round).
    dtype = tf.float64 if outputs["sets"].dtype == tf.float64 else tf.float32
    sets, masks = tf.cast(outputs["sets"], dtype), tf.cast(outputs["masks"], dtype)
    target_set, target_mask = tf.cast(batch[settings.set_key], dtype), tf.cast(batch["mask"], dtype)
    set_loss = loss_fn(sets, masks, target_set, target_mask, all_steps=settings.all_steps, reduction="none")
    repr_loss = tf.zeros_like(set_loss)
    encoder = model.repr_encoder
    if settings.repr_lambda > 0 and encoder is not None:
        # Neither side is stop-gradiented: this trains the image encoder
        # towards g(target) and g towards the image embedding (docs/algorithm.md §7).
        target_z = tf.cast(encoder(target_set, target_mask, training=training), dtype)
        repr_loss = losses_lib.repr_loss(target_z, tf.cast(outputs["z"], dtype), reduction="none")
    return outputs, {"loss": set_loss + settings.repr_lambda * repr_loss, "set_loss": set_loss, "repr_loss": repr_loss}


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


class Trainer:
    """Owns model, optimizer and loss settings; builds the train step.

    Args:
        model: A `SetAutoEncoder` or `ImageToSet` built under `strategy.scope()`.
        optimizer: A Keras optimizer created under the same scope.
        settings: `LossSettings`.
        global_batch_size: Examples per step over all replicas; per-replica
            losses are divided by it so that summed replica gradients equal
            the gradient of the global batch mean.
        strategy: A `tf.distribute.Strategy` (default: the current one).
        run_eagerly: Run the step without `tf.function` (debugging).
        jit_compile: XLA-compile the step (the Hungarian assignment stays on
            the host, so XLA only applies to Chamfer runs).
    """

    def __init__(
        self, model, optimizer, settings, *, global_batch_size, strategy=None, run_eagerly=False, jit_compile=False
    ):
        self.model = model
        self.optimizer = optimizer
        self.settings = settings
        self.global_batch_size = int(global_batch_size)
        self.strategy = strategy or tf.distribute.get_strategy()
        try:
            check_settings(model, settings)
        except ValueError as e:
            raise ValueError(f"Trainer: {e}") from None
        self.traces = 0
        self.workers, self.worker_index, self.local_replicas = workers(self.strategy)
        step = self._distributed_step
        self.train_step = step if run_eagerly else tf.function(step, jit_compile=jit_compile or None)

    def split(self, batch):
        """This worker's batch as per-replica values (`split_for_replicas`)."""
        return split_for_replicas(self.strategy, batch, self.global_batch_size)

    def _replica_step(self, batch, iters=None):
        outputs, losses, grads = loss_and_gradients(
            self.model, self.optimizer, batch, self.settings, global_batch_size=self.global_batch_size, iters=iters
        )
        self.optimizer.apply(grads, self.model.trainable_variables)
        metrics = {f"train/{k}": tf.reduce_sum(v) / self.global_batch_size for k, v in losses.items()}
        # Per-step inner-loop statistics, summed over this replica's samples.
        metrics["inner_loss"] = tf.reduce_sum(outputs["inner_losses"], axis=1) / self.global_batch_size
        metrics["inner_grad_norm"] = tf.reduce_sum(outputs["grad_norms"], axis=1) / self.global_batch_size
        return metrics

    def _distributed_step(self, batch, iters=None):
        """One optimizer step on a batch; `iters` (a Python int) overrides the DSPN's inner steps."""
        self.traces += 1  # Python side effect: counts traces (one per distinct `iters`), not calls.
        per_replica = self.strategy.run(self._replica_step, args=(batch,), kwargs={"iters": iters})
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}


def cluster_task(strategy):
    """(task type, task id) of this process in a multi-worker cluster, else (None, 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, resolver.task_id or 0


def is_chief(strategy):
    """True unless this is a non-chief worker of a multi-worker strategy."""
    task_type, task_id = cluster_task(strategy)
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def workers(strategy):
    """(number of workers, this worker's index, replicas on this worker)."""
    if strategy.num_replicas_in_sync == 1:
        return 1, 0, 1
    local = len(strategy.extended.worker_devices)
    count = strategy.num_replicas_in_sync // local
    return count, (cluster_task(strategy)[1] if count > 1 else 0), local


def split_for_replicas(strategy, batch, global_batch_size):
    """Hands each local replica its slice of this worker's batch.

    The batches come from a plain `tf.data` iterator (which, unlike a
    distributed iterator, can be checkpointed) and are split here.
    """
    if strategy.num_replicas_in_sync == 1:
        return batch
    _, _, local = workers(strategy)
    per_replica = global_batch_size // strategy.num_replicas_in_sync

    def slice_for(context):
        i = context.replica_id_in_sync_group % local
        return tf.nest.map_structure(lambda t: t[i * per_replica : (i + 1) * per_replica], batch)

    return strategy.experimental_distribute_values_from_function(slice_for)
