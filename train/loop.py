"""The outer training loop (Orbit's `Controller` role).

The `Trainer` (`dspn_tf.training`) owns model, optimizer and the train step;
`Loop` owns everything around the steps: the step counter, resuming from and
writing checkpoints, the NaN guard, summaries, pictures and the evaluation
cadence.
"""

import errno
import math
import os
import signal
import threading
import time

import numpy as np
import tensorflow as tf

from dspn_tf import evaluation, visualize
from dspn_tf.data import clevr
from dspn_tf.training import is_chief, worker_rows
from train import checkpoints, events, progress, summaries
from train import config as config_lib


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left untouched."""


# The exit code of a run stopped by SIGTERM after it saved its checkpoint:
# 128 + SIGTERM, what a shell reports for a process killed by SIGTERM, so a
# scheduler (Kubernetes Job, Slurm requeue) treats the run as interrupted and
# restarts it instead of marking it complete (exit code 0).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """SIGTERM stopped the run between two steps after a checkpoint of the last completed step was written.

    A `SystemExit` with `PREEMPTED_EXIT_CODE`, so the entry point ends without a
    traceback and restarting the same command resumes from that checkpoint.
    """

    def __init__(self, message):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self):
        return self.message


class WorkerLostError(RuntimeError):
    """Under --strategy=multi_worker, another worker stopped (killed, crashed, unreachable); this one stops too."""


# What a collective op raises on the survivors when a peer dies (a reset connection, an
# aborted collective, a coordination-service heartbeat timeout).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError)


class DiskFullError(OSError):
    """A checkpoint could not be written because its file system is full; the previous checkpoint is kept."""


class Loop:
    """Runs a `Trainer` to `total_steps` with checkpoints, summaries and evaluation.

    Args:
        config: The `RunConfig` (cadences, model_dir, decoder, dataset).
        trainer: A `dspn_tf.training.Trainer`.
        train_iterator: An iterator of this worker's training batches (a
            plain `tf.data` iterator: it is checkpointed with a single worker).
        eval_dataset: Batched evaluation data (pictures come from its first batch).
        total_steps: Steps of the whole run (a resume continues to it).
        schedule: `config.iters_schedule(...)`: inner steps by training step, or None.
    """

    def __init__(self, config, trainer, train_iterator, eval_dataset, *, total_steps, schedule):
        self.config = config
        self.trainer = trainer
        self.iterator = train_iterator
        self.eval_dataset = eval_dataset
        self.total_steps = total_steps
        self.schedule = schedule
        self.settings = trainer.settings
        self.eval_iters = config_lib.eval_iters(config)
        # Outside the strategy's scope: a host-side counter, not a mirrored variable.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.chief = is_chief(trainer.strategy)
        self.manager = self._checkpoint_manager()
        resumed = self.manager.latest_checkpoint is not None
        # A periodic evaluation due at the resume step may have been killed: it runs again first.
        self._evaluate_on_resume = resumed and self._evaluation_due(int(self.step))
        if self.chief:  # Also without a checkpoint: a run killed before its first one logged steps too.
            self._drop_stale_summaries(int(self.step))
        if self.chief:
            self.train_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
            self.eval_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "eval"))
        else:
            self.train_writer = self.eval_writer = tf.summary.create_noop_writer()
        self.picture_batch = next(iter(eval_dataset))
        self.saved_step = int(self.step) if self.manager.latest_checkpoint else None
        self._stop_signal = None

    def _evaluation_due(self, current):
        return bool(self.config.eval_every) and current % self.config.eval_every == 0 and current != self.total_steps

    def _drop_stale_summaries(self, current):
        """Removes what a killed run logged after its last checkpoint (step `current`, 0 if none): it is redone.

        Summaries up to `current` were flushed before its checkpoint was saved; an
        evaluation of step `current` comes after the save and is redone (periodic ones
        by `run`, the final one by the entry point), so it is dropped as well. The
        temporary folders of checkpoint saves it was killed in go too.
        """
        model_dir = self.config.model_dir
        checkpoints.remove_interrupted_saves(os.path.join(model_dir, "checkpoints"))
        dropped = summaries.purge_after(os.path.join(model_dir, "train"), current)
        redo_eval = self._evaluate_on_resume or current == self.total_steps
        dropped += summaries.purge_after(os.path.join(model_dir, "eval"), current - 1 if redo_eval else current)
        # Every start logs the run's HParams settings again (train.train) and its results at the end.
        dropped += summaries.purge_after(os.path.join(model_dir, "hparams"), -1)
        if dropped:
            print(f"Dropped {dropped} TensorBoard event(s) logged after step {current} by the interrupted run.")

    def _checkpoint_manager(self):
        """Restores the newest checkpoint of the run, if any; returns the manager that saves new ones."""
        # The input position is part of the checkpoint, so a resumed run sees the batches an
        # uninterrupted one would (several workers read the same global batches: one position).
        state = {
            "model": self.trainer.model,
            "optimizer": self.trainer.optimizer,
            "step": self.step,
            "iterator": self.iterator,
        }
        shared_dir = os.path.join(self.config.model_dir, "checkpoints")
        latest = checkpoints.restore(state, shared_dir, required=False, partial=False, resume=True)
        if latest:
            print(f"Resumed from {latest} at step {int(self.step)}.", flush=True)
            events.emit(self.config.model_dir, events.RESUMED, chief=self.chief, step=int(self.step), checkpoint=latest)
        # Saving is collective under multi-worker strategies: every worker writes,
        # but only the chief into the run directory (the others into scratch).
        own_dir = shared_dir
        if not self.chief:
            own_dir = os.path.join(self.config.model_dir, f".worker-{os.getpid()}", "checkpoints")
        return tf.train.CheckpointManager(
            tf.train.Checkpoint(**state), own_dir, max_to_keep=self.config.keep_checkpoints
        )

    def run(self):
        """Trains from the current step to `total_steps`; returns the running-mean loss."""
        config = self.config
        progbar = progress.bar(self.total_steps, enabled=config.progress)
        progbar.update(int(self.step))
        start, first_step, running = time.time(), int(self.step), None
        previous_handler = self._catch_sigterm()
        if self._evaluate_on_resume:
            self._evaluate_on_resume = False
            self.evaluate()
        try:
            while int(self.step) < self.total_steps:
                if self._stop_signal is not None:
                    self._stop_for_preemption()
                running = self._one_step(progbar, running)
            if self._stop_signal is not None:
                # SIGTERM during the last step: its checkpoint is written; skip what follows the loop.
                self._stop_for_preemption()
        except _PEER_ERRORS as e:
            if self.trainer.workers == 1:
                raise
            raise self._worker_lost(e) from None
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        elapsed, steps_run = time.time() - start, int(self.step) - first_step
        if steps_run:
            print(
                f"Trained {steps_run} steps in {elapsed:.1f} s ({elapsed / steps_run:.3f} s/step); "
                f"{self.trainer.traces} trace(s) of the train step.",
                flush=True,
            )
        return running

    def _worker_lost(self, error):
        """The `WorkerLostError` of a collective step or save that failed because another worker is gone."""
        shared = os.path.join(self.config.model_dir, "checkpoints")
        latest = tf.train.latest_checkpoint(shared)
        lines = [line.strip() for line in (getattr(error, "message", None) or str(error)).splitlines() if line.strip()]
        # TF's message starts with the op's Python stack; the lines naming the peer are what helps.
        detail = " ".join(line for line in lines if "aborted" in line or "remote target" in line) or lines[0]
        return WorkerLostError(
            f"Another worker of the cluster stopped (TensorFlow: {type(error).__name__}: {detail[:300]}); "
            f"this worker stops too, after step {int(self.step)} of {self.total_steps}. Restart every worker with "
            f"the same command: they resume from the chief's newest checkpoint, {latest or '(none yet)'}."
        )

    def _catch_sigterm(self):
        """Makes SIGTERM set a flag that `run` reads between steps; returns the handler it replaced, or None.

        A plain handler rather than `tf.distribute.experimental.PreemptionCheckpointHandler`:
        that class supports only MultiWorkerMirroredStrategy and TPUStrategy (not the default
        single-device or mirrored runs), restores and numbers checkpoints itself by its own run
        counter, and exits through its own `exit_fn`; the loop already owns the step counter,
        the resume and the checkpoint numbering. Several workers are left to the default
        action (the process dies; the chief's last periodic checkpoint is the resume point):
        one worker saving alone would wait forever in the collective save.
        """
        if self.trainer.workers != 1 or threading.current_thread() is not threading.main_thread():
            return None

        def on_sigterm(signum, frame):
            del frame
            self._stop_signal = signum

        return signal.signal(signal.SIGTERM, on_sigterm)

    def _stop_for_preemption(self):
        """Writes the checkpoint of the last completed step (unless it exists) and raises `Preempted`."""
        current = int(self.step)
        if self.saved_step != current:
            self._save(current)
        self.train_writer.flush()
        self.eval_writer.flush()
        message = (
            f"SIGTERM received: stopped after step {current} of {self.total_steps}; checkpoint "
            f"{self.manager.latest_checkpoint} holds it. Restart the same command to resume "
            f"(exit code {PREEMPTED_EXIT_CODE})."
        )
        print(message, flush=True)
        raise Preempted(message)

    def _save(self, current):
        """Saves the checkpoint of step `current`; a full disk raises `DiskFullError` naming the folder."""
        # Flushed first: a checkpoint's step never lacks the summaries logged up to it.
        self.train_writer.flush()
        self.eval_writer.flush()
        try:
            self.manager.save(checkpoint_number=current)
        except (OSError, tf.errors.OpError) as e:
            if not _is_disk_full(e):
                raise
            raise DiskFullError(
                errno.ENOSPC,
                f"No space left on the device while writing the checkpoint of step {current} to "
                f"{self.manager.directory}; the previous checkpoint "
                f"{self.manager.latest_checkpoint or '(none yet)'} is kept. Free space and restart the same "
                f"command to resume from it. ({e})",
            ) from e
        self.saved_step = current
        events.emit(self.config.model_dir, events.CHECKPOINT, chief=self.chief, step=current)

    def _one_step(self, progbar, running):
        """Runs one training step with its summaries, checkpoint and evaluation; returns the running loss."""
        iters = config_lib.iters_at(self.schedule, int(self.step))
        batch = next(self.iterator)  # A global batch (config.train_batches): this worker's rows of it.
        batch = worker_rows(self.trainer.strategy, batch, self.config.batch_size)
        values = self.trainer.train_step(self.trainer.split(batch), iters=iters)
        loss = float(values["train/loss"])
        if not math.isfinite(loss):
            # The update of this step is not saved: the newest checkpoint on
            # disk is the last good state.
            raise NonFiniteLossError(
                f"The loss became {loss} at step {int(self.step) + 1}; stopping. The last good checkpoint is "
                f"{self.manager.latest_checkpoint or '(none yet)'} and was left untouched."
            )
        self.step.assign_add(1)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        progbar.update(int(self.step), values=[("loss", running)])
        self._after_step(int(self.step), values)
        return running

    def _after_step(self, current, values):
        """Summaries, pictures, checkpoints and evaluation due at step `current`."""
        config, last = self.config, current == self.total_steps
        if current % config.log_every == 0 or last:
            with self.train_writer.as_default(step=current):
                self._write_scalars(values)
        if (config.image_every and current % config.image_every == 0) or last:
            with self.train_writer.as_default(step=current):
                write_pictures(self.trainer.model, self.picture_batch, self.settings.set_key, current)
        if current % config.checkpoint_every == 0 or last:
            self._save(current)
        if config.eval_every and current % config.eval_every == 0 and not last:
            self.evaluate()

    def _write_scalars(self, values):
        for name in ("train/loss", "train/set_loss", "train/repr_loss"):
            tf.summary.scalar(name, values[name])
        for t, (inner, norm) in enumerate(zip(values["inner_loss"].numpy(), values["inner_grad_norm"].numpy())):
            tf.summary.scalar(f"inner/loss_step_{t}", inner)
            tf.summary.scalar(f"inner/grad_norm_step_{t}", norm)
        optimizer = self.trainer.optimizer
        lr = optimizer.learning_rate
        tf.summary.scalar("train/learning_rate", lr(optimizer.iterations) if callable(lr) else lr)

    def evaluate(self):
        """Evaluates the model at every --eval_iters count and writes `eval/<metric>/iters_<n>`."""
        print(f"Evaluating step {int(self.step)} at {', '.join(map(str, self.eval_iters))} inner steps ...", flush=True)
        events.emit(self.config.model_dir, events.EVALUATING, chief=self.chief, step=int(self.step))
        results = evaluation.evaluate(
            self.trainer.model, self.eval_dataset, set_key=self.settings.set_key, iters_list=self.eval_iters
        )
        with self.eval_writer.as_default(step=int(self.step)):
            for iters, row in results.items():
                for name, value in row.items():
                    if name != "num_examples":
                        tf.summary.scalar(f"eval/{name}/iters_{iters}", value)
        events.emit(self.config.model_dir, events.EVALUATED, chief=self.chief, step=int(self.step))
        return results


def _is_disk_full(error):
    """ENOSPC as a Python OSError, or TF's file-system error carrying the OS message."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error)


def progression_rows(sets, masks, batch, set_key, count, baseline=None):
    """One picture row (uint8 `[H, W, 3]`) for each of the first `count` examples: every step, then the truth.

    `sets` / `masks` are a decoder's `[steps, batch, ...]` outputs on `batch`. set-MNIST
    sets are points; CLEVR states are drawn from above (the auto-encoder) or on the
    image (the image task); boxes on the image. `baseline` (`(sets, masks)` of
    another model's final step, `[batch, ...]`) is drawn before the truth.
    """
    target, target_mask = batch[set_key].numpy(), batch["mask"].numpy()
    images = batch["image"].numpy() if "image" in batch else None
    rows = []
    for i in range(min(count, sets.shape[1])):
        step_args = (sets[:, i], masks[:, i], target[i], target_mask[i])
        extra = {} if baseline is None else {"baseline": (baseline[0][i], baseline[1][i])}
        if set_key == "set":
            rows.append(visualize.set_progression(*step_args, **extra))
        elif set_key == "boxes":
            rows.append(visualize.boxes_progression(images[i], *step_args, **extra))
        elif images is not None:  # The image task: the objects drawn on the image at their projected positions.
            rows.append(visualize.states_on_image(images[i], *step_args, clevr.ATTRIBUTES, **extra))
        else:  # The state auto-encoder: objects seen from above.
            rows.append(visualize.state_progression(*step_args, clevr.ATTRIBUTES, **extra))
    return rows


def write_pictures(model, batch, set_key, step):
    """Progression pictures of the first examples of a fixed batch (inside a summary writer)."""
    out = model(model.inputs_of(batch, set_key), training=False)
    sets, masks = out["sets"].numpy(), out["masks"].numpy()
    count = min(4, sets.shape[1])
    rows = progression_rows(sets, masks, batch, set_key, count)
    tag = {"set": "sets", "state": "states", "boxes": "boxes"}[set_key]
    tf.summary.image(f"progression/{tag}", np.stack(rows), step=step, max_outputs=count)
    if set_key == "state":
        target, target_mask = batch[set_key].numpy(), batch["mask"].numpy()
        tables = [
            visualize.state_table(sets[-1, i], masks[-1, i], target[i], target_mask[i], clevr.ATTRIBUTES)
            for i in range(count)
        ]
        tf.summary.text("progression/state_tables", "\n\n".join(tables), step=step)
