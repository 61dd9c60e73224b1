"""The distributed train step (Orbit's StandardTrainer role), and the names training code imports from here.

`Trainer` owns the model, the optimizer and the loss settings, and builds one
`tf.function` train step. The outer loop (steps, checkpoints, summaries,
evaluation) lives in `train/`. The other parts of training live in their own
modules and are importable from here as before:

- `LossSettings` (`dspn_tf.loss_settings`): how a batch is scored;
- `per_sample_losses`, `loss_and_gradients`, `check_settings` (`dspn_tf.batch_losses`):
  the losses of a model on a batch and one replica's gradients;
- `cluster_task`, `is_chief`, `workers`, `worker_rows`, `split_for_replicas`
  (`dspn_tf.cluster`): the process's place in a distributed run and the split of a batch.
"""

import tensorflow as tf

from dspn_tf.batch_losses import check_settings, loss_and_gradients, per_sample_losses
from dspn_tf.cluster import cluster_task, is_chief, split_for_replicas, worker_rows, workers
from dspn_tf.loss_settings import LossSettings

__all__ = [
    "LossSettings",
    "Trainer",
    "check_settings",
    "cluster_task",
    "is_chief",
    "loss_and_gradients",
    "per_sample_losses",
    "split_for_replicas",
    "worker_rows",
    "workers",
]


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
        jit_compile: XLA-compile the step. An "auto" assignment solver of the
            Hungarian loss (`LossSettings.solver`) is then the in-graph one.
    """

    def __init__(
        self, model, optimizer, settings, *, global_batch_size, strategy=None, run_eagerly=False, jit_compile=False
    ):
        self.model = model
        self.optimizer = optimizer
        self.settings = settings
        # The settings the step scores with: an "auto" solver resolved for XLA / an accelerator.
        self.step_settings = settings.for_step(jit_compile=jit_compile and not run_eagerly)
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
            self.model, self.optimizer, batch, self.step_settings, global_batch_size=self.global_batch_size, iters=iters
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
