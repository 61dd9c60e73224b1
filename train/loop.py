"""The outer training loop (Orbit's `Controller` role) and the actions it runs after steps.

The `Trainer` (`dspn_tf.training`) owns model, optimizer and the train step.
`Loop` owns the step counter, the resume from and the writing of checkpoints,
the NaN guard, SIGTERM and lost workers, and calls its `Action`s after each
step when they are due: `WriteScalars`, `WritePictures`, `SaveCheckpoint` and
`Evaluate` (Orbit's train actions). `worker_batch` is the one place a global
batch is split over workers and replicas.
"""

import errno
import math
import os
import signal
import threading
import time

import numpy as np
import tensorflow as tf

from dspn_tf import evaluation
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


def worker_batch(trainer, batch):
    """This worker's share of a global batch as the trainer's per-replica values: the one place batches are split.

    Every worker reads the whole global batch (`train.config.train_batches`), so its
    input position is the chief's; `dspn_tf.cluster.worker_rows` gives worker `i` of `n`
    rows `[i * B / n, (i + 1) * B / n)` and `Trainer.split` hands each of its replicas a
    slice of those.
    """
    return trainer.split(worker_rows(trainer.strategy, batch, trainer.global_batch_size))


class Action:
    """Work the loop does after a training step when it is due (Orbit's train actions).

    `due(step, total)` says whether the action runs after step `step` of a run of
    `total` steps; `action(loop, step, values)` runs it (`values`: the step's
    train values, None when it is redone on resume). An action with
    `redo_on_resume` runs after the loop saved the step's checkpoint, so a kill
    may have cut it short: when a resumed run starts at a step where it is due,
    the loop runs it again before the first step.
    """

    redo_on_resume = False

    def due(self, step, total):
        """Whether the action runs after step `step` of `total`."""
        raise NotImplementedError

    def __call__(self, loop, step, values):
        """Runs the action after step `step` of `loop`."""
        raise NotImplementedError


class PeriodicAction(Action):
    """An action due after every `every` steps and after the last.

    Args:
        every: After every this many steps, and after the last.
    """

    def __init__(self, every):
        self.every = every

    def due(self, step, total):
        return step % self.every == 0 or step == total


class WriteScalars(PeriodicAction):
    """Writes the train losses, each inner step's loss and gradient norm and the learning rate (`PeriodicAction`)."""

    def __call__(self, loop, step, values):
        with loop.train_writer.as_default(step=step):
            for name in ("train/loss", "train/set_loss", "train/repr_loss"):
                tf.summary.scalar(name, values[name])
            inner = zip(values["inner_loss"].numpy(), values["inner_grad_norm"].numpy())
            for t, (loss, norm) in enumerate(inner):
                tf.summary.scalar(f"inner/loss_step_{t}", loss)
                tf.summary.scalar(f"inner/grad_norm_step_{t}", norm)
            optimizer = loop.trainer.optimizer
            lr = optimizer.learning_rate
            tf.summary.scalar("train/learning_rate", lr(optimizer.iterations) if callable(lr) else lr)


class WritePictures(Action):
    """Writes progression pictures of a fixed batch (`write_pictures`).

    Args:
        model: The model being trained.
        batch: The batch drawn every time (the evaluation split's first).
        task: The run's `train.tasks.Task` (its target key and picture drawer).
        every: After every this many steps (0: never), and after the last.
    """

    def __init__(self, model, batch, task, every):
        self.model = model
        self.batch = batch
        self.task = task
        self.every = every

    def due(self, step, total):
        return bool(self.every) and step % self.every == 0 or step == total

    def __call__(self, loop, step, values):
        with loop.train_writer.as_default(step=step):
            write_pictures(self.model, self.batch, self.task, step)


class SaveCheckpoint(PeriodicAction):
    """Saves the loop's checkpoint (`Loop.save`; `PeriodicAction`)."""

    def __call__(self, loop, step, values):
        loop.save(step)


class Evaluate(Action):
    """Evaluates the model at several inner step counts and writes `eval/<metric>/iters_<n>`.

    Also prints the first metric at each step count, and the `evaluated` line of
    `run_events.jsonl` holds the results.

    Periodic evaluations skip the last step: the entry point evaluates the final
    model itself (`evaluate(loop)`). Runs again on resume (see `Action`).

    Args:
        model: The model being trained.
        dataset: Batched evaluation data.
        set_key: Key of the target set in a batch.
        iters_list: Inner step counts to evaluate at.
        every: After every this many steps (0: never).
        metric: `dspn_tf.evaluation.evaluate`'s `metric` (None: the one of `set_key`).
    """

    redo_on_resume = True

    def __init__(self, model, dataset, *, set_key, iters_list, every=0, metric=None):
        self.model = model
        self.dataset = dataset
        self.set_key = set_key
        self.iters_list = iters_list
        self.every = every
        self.metric = metric

    def due(self, step, total):
        return bool(self.every) and step % self.every == 0 and step != total

    def __call__(self, loop, step, values):
        self.evaluate(loop)

    def evaluate(self, loop):
        """Evaluates the model at `loop`'s current step, logs it to `loop.eval_writer` and returns the results."""
        step = int(loop.step)
        print(f"Evaluating step {step} at {', '.join(map(str, self.iters_list))} inner steps ...", flush=True)
        events.emit(loop.model_dir, events.EVALUATING, chief=loop.chief, step=step)
        results = evaluation.evaluate(
            self.model, self.dataset, set_key=self.set_key, iters_list=self.iters_list, metric=self.metric
        )
        with loop.eval_writer.as_default(step=step):
            for iters, row in results.items():
                for name, value in row.items():
                    if name != "num_examples":
                        tf.summary.scalar(f"eval/{name}/iters_{iters}", value)
        first = {iters: next(name for name in row if name != "num_examples") for iters, row in results.items()}
        print(
            f"Evaluated step {step}: "
            + ", ".join(f"{name} {results[iters][name]:.6g} at {iters} inner steps" for iters, name in first.items()),
            flush=True,
        )
        events.emit(loop.model_dir, events.EVALUATED, chief=loop.chief, step=step, results=results)
        return results


class Loop:
    """Runs a `Trainer` to `total_steps`, calling its actions after each step (Orbit's `Controller`).

    Construction touches neither the disk nor the data. The entry point then
    takes the named steps that prepare a run, in this order: `restore` (resume
    from the run's newest checkpoint), `drop_stale_events` (what a killed run
    logged after it) and `open_writers`; then `run`.

    Args:
        trainer: A `dspn_tf.training.Trainer`.
        train_iterator: An iterator of the global training batches (a plain
            `tf.data` iterator, checkpointed with the model; `worker_batch`
            takes this worker's rows).
        total_steps: Steps of the whole run (a resume continues to it).
        model_dir: The run directory: `checkpoints/`, and the `train/` and
            `eval/` TensorBoard logs.
        actions: `Action`s run after each step when due, in order (e.g.
            `WriteScalars`, `WritePictures`, `SaveCheckpoint`, `Evaluate`).
        schedule: `train.config.iters_schedule(...)`: inner steps by training step, or None.
        keep_checkpoints: Checkpoints kept in `model_dir/checkpoints`.
        progress: Show progress (`train.progress.bar`).
    """

    def __init__(
        self,
        trainer,
        train_iterator,
        *,
        total_steps,
        model_dir,
        actions=(),
        schedule=None,
        keep_checkpoints=3,
        progress=True,
    ):
        self.trainer = trainer
        self.iterator = train_iterator
        self.total_steps = total_steps
        self.model_dir = model_dir
        self.actions = list(actions)
        self.schedule = schedule
        self.progress = progress
        # Outside the strategy's scope: a host-side counter, not a mirrored variable.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.chief = is_chief(trainer.strategy)
        # The input position is part of the checkpoint, so a resumed run sees the batches an
        # uninterrupted one would (several workers read the same global batches: one position).
        self._state = {
            "model": trainer.model,
            "optimizer": trainer.optimizer,
            "step": self.step,
            "iterator": self.iterator,
        }
        # Saving is collective under multi-worker strategies: every worker writes,
        # but only the chief into the run directory (the others into scratch).
        own_dir = self._shared_checkpoints
        if not self.chief:
            own_dir = os.path.join(model_dir, f".worker-{os.getpid()}", "checkpoints")
        self.manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(**self._state), own_dir, max_to_keep=keep_checkpoints
        )
        self.saved_step = None
        self.train_writer = self.eval_writer = None
        self._redo = []
        self._stop_signal = None

    @property
    def _shared_checkpoints(self):
        return os.path.join(self.model_dir, "checkpoints")

    def restore(self):
        """Restores the newest readable checkpoint of the run, if any (model, optimizer, step, input position).

        Returns:
            The checkpoint's path, or None for a fresh run.
        """
        latest = checkpoints.restore(self._state, self._shared_checkpoints, required=False, partial=False, resume=True)
        if latest:
            print(f"Resumed from {latest} at step {int(self.step)}.", flush=True)
            events.emit(self.model_dir, events.RESUMED, chief=self.chief, step=int(self.step), checkpoint=latest)
        if self.manager.latest_checkpoint is not None:
            current = int(self.step)
            self.saved_step = current
            # An action due after the resume step's checkpoint (an evaluation) may have been killed.
            self._redo = [a for a in self.actions if a.redo_on_resume and a.due(current, self.total_steps)]
        return latest

    def drop_stale_events(self):
        """Removes what a killed run logged after its last checkpoint (the current step, 0 if none): it is redone.

        Call after `restore` and before `open_writers`. Summaries up to the current step
        were flushed before its checkpoint was saved; an evaluation of that step comes
        after the save and is redone (periodic ones by `run`, the final one by the entry
        point), so it is dropped as well. The temporary folders of checkpoint saves it was
        killed in go too. The chief's work (also without a checkpoint: a run killed before
        its first one logged steps too); other workers do nothing.

        Returns:
            The number of TensorBoard events dropped.
        """
        if not self.chief:
            return 0
        current = int(self.step)
        checkpoints.remove_interrupted_saves(self._shared_checkpoints)
        dropped = summaries.purge_after(os.path.join(self.model_dir, "train"), current)
        redo_eval = any(isinstance(a, Evaluate) for a in self._redo) or current == self.total_steps
        dropped += summaries.purge_after(os.path.join(self.model_dir, "eval"), current - 1 if redo_eval else current)
        # Every start logs the run's HParams settings again (train.train) and its results at the end.
        dropped += summaries.purge_after(os.path.join(self.model_dir, "hparams"), -1)
        if dropped:
            print(f"Dropped {dropped} TensorBoard event(s) logged after step {current} by the interrupted run.")
        return dropped

    def open_writers(self):
        """Opens `train_writer` and `eval_writer` (`model_dir/train`, `model_dir/eval`; no-ops on other workers)."""
        if self.chief:
            self.train_writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
            self.eval_writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))
        else:
            self.train_writer = self.eval_writer = tf.summary.create_noop_writer()

    def run(self):
        """Trains from the current step to `total_steps`; returns the running-mean loss."""
        progbar = progress.bar(self.total_steps, enabled=self.progress)
        progbar.update(int(self.step))
        start, first_step, running = time.time(), int(self.step), None
        previous_handler = self._catch_sigterm()
        redo, self._redo = self._redo, []
        for action in redo:
            action(self, int(self.step), None)
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
        latest = tf.train.latest_checkpoint(self._shared_checkpoints)
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
            self.save(current)
        self._flush_writers()
        message = (
            f"SIGTERM received: stopped after step {current} of {self.total_steps}; checkpoint "
            f"{self.manager.latest_checkpoint} holds it. Restart the same command to resume "
            f"(exit code {PREEMPTED_EXIT_CODE})."
        )
        print(message, flush=True)
        raise Preempted(message)

    def _flush_writers(self):
        for writer in (self.train_writer, self.eval_writer):
            if writer is not None:
                writer.flush()

    def save(self, current):
        """Saves the checkpoint of step `current`; a full disk raises `DiskFullError` naming the folder."""
        # Flushed first: a checkpoint's step never lacks the summaries logged up to it.
        self._flush_writers()
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
        events.emit(self.model_dir, events.CHECKPOINT, chief=self.chief, step=current)

    def _one_step(self, progbar, running):
        """Runs one training step and the actions due after it; returns the running loss."""
        iters = config_lib.iters_at(self.schedule, int(self.step))
        values = self.trainer.train_step(worker_batch(self.trainer, next(self.iterator)), iters=iters)
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
        current = int(self.step)
        for action in self.actions:
            if action.due(current, self.total_steps):
                action(self, current, values)
        return running


def _is_disk_full(error):
    """ENOSPC as a Python OSError, or TF's file-system error carrying the OS message."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(error)


def progression_rows(sets, masks, batch, task, count, baseline=None):
    """One picture row (uint8 `[H, W, 3]`) for each of the first `count` examples: every step, then the truth.

    `sets` / `masks` are a decoder's `[steps, batch, ...]` outputs on `batch`, drawn
    by the task's picture drawer (`train.tasks.Pictures.row`). `baseline`
    (`(sets, masks)` of another model's final step, `[batch, ...]`) is drawn before
    the truth.
    """
    target, target_mask = batch[task.set_key].numpy(), batch["mask"].numpy()
    # A set-to-set task's picture gets the input set where an image task's gets the image.
    source = "image" if "image" in batch else getattr(task, "input_key", None)
    images = batch[source].numpy() if source in batch else None
    rows = []
    for i in range(min(count, sets.shape[1])):
        extra = {} if baseline is None else {"baseline": (baseline[0][i], baseline[1][i])}
        image = None if images is None else images[i]
        rows.append(task.pictures.row(image, sets[:, i], masks[:, i], target[i], target_mask[i], **extra))
    return rows


def write_pictures(model, batch, task, step):
    """Progression pictures of the first examples of a fixed batch (inside a summary writer)."""
    out = model(model.inputs_of(batch, task.set_key), training=False)
    sets, masks = out["sets"].numpy(), out["masks"].numpy()
    count = min(4, sets.shape[1])
    rows = progression_rows(sets, masks, batch, task, count)
    pictures = task.pictures
    tf.summary.image(f"progression/{pictures.tag}", np.stack(rows), step=step, max_outputs=count)
    if pictures.table is not None:
        target, target_mask = batch[task.set_key].numpy(), batch["mask"].numpy()
        tables = [pictures.table(sets[-1, i], masks[-1, i], target[i], target_mask[i]) for i in range(count)]
        tf.summary.text(f"progression/{pictures.table_tag}", "\n\n".join(tables), step=step)
