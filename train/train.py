r"""Trains a DSPN (or a baseline decoder) and evaluates it.

    python -m train.train --flagfile=configs/clevr_mini_state_dspn.cfg [--flag=value ...]

Restarting the same command resumes from the newest checkpoint in --model_dir.
"""

import json
import math
import os
import sys
import time

from absl import app, flags, logging
import keras
import numpy as np
import tensorflow as tf

from dspn_tf import evaluation, visualize
from dspn_tf.data import clevr
from dspn_tf.training import Trainer, model_inputs
from train import common

FLAGS = flags.FLAGS



class NonFiniteLossError(RuntimeError):
    pass


def _batches(dataset, batch_size, shuffle, seed):
    if shuffle:
        dataset = dataset.shuffle(FLAGS.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
    # Training batches are full so every step has the same shape (one trace).
    dataset = dataset.batch(batch_size, drop_remainder=shuffle)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _cluster_task(strategy):
    """(task type, task id) of this process in a multi-worker cluster, else (None, 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, resolver.task_id or 0


def _workers(strategy):
    """(number of workers, this worker's index, replicas on this worker)."""
    if strategy.num_replicas_in_sync == 1:
        return 1, 0, 1
    local = len(strategy.extended.worker_devices)
    workers = strategy.num_replicas_in_sync // local
    return workers, (_cluster_task(strategy)[1] if workers > 1 else 0), local


def _train_data(strategy):
    """This worker's batches of the training split and the split's size."""
    ds = common.build_split("train")
    if FLAGS.max_train_examples:
        ds = ds.take(FLAGS.max_train_examples)
    size = int(ds.cardinality())
    if size < 0:
        size = int(ds.reduce(0, lambda n, _: n + 1))
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        raise ValueError(f"--batch_size={FLAGS.batch_size} must be divisible by the {replicas} replicas.")
    if size < FLAGS.batch_size:
        raise ValueError(f"The training split has {size} examples, fewer than --batch_size={FLAGS.batch_size}.")
    workers, index, _ = _workers(strategy)
    if workers > 1:
        ds = ds.shard(workers, index)
    return _batches(ds, FLAGS.batch_size // workers, True, FLAGS.seed), size


def split_for_replicas(strategy, batch, global_batch_size):
    """Hands each local replica its slice of this worker's batch.

    The batches come from a plain `tf.data` iterator (which, unlike a
    distributed iterator, can be checkpointed) and are split here.
    """
    if strategy.num_replicas_in_sync == 1:
        return batch
    _, _, local = _workers(strategy)
    per_replica = global_batch_size // strategy.num_replicas_in_sync

    def slice_for(context):
        i = context.replica_id_in_sync_group % local
        return tf.nest.map_structure(lambda t: t[i * per_replica:(i + 1) * per_replica], batch)

    return strategy.experimental_distribute_values_from_function(slice_for)


def _eval_data():
    ds = common.build_split("eval")
    if FLAGS.max_eval_examples:
        ds = ds.take(FLAGS.max_eval_examples)
    return _batches(ds, FLAGS.batch_size, False, None)


def _total_steps(train_size):
    if FLAGS.train_steps:
        return FLAGS.train_steps
    if FLAGS.epochs:
        return FLAGS.epochs * (train_size // FLAGS.batch_size)
    raise ValueError("Set --train_steps or --epochs.")


def _is_chief(strategy):
    """True unless this is a non-chief worker of a multi-worker strategy."""
    task_type, task_id = _cluster_task(strategy)
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def _write_pictures(model, batch, step):
    """Progression pictures of the first examples of a fixed batch."""
    settings = common.loss_settings()
    out = model(model_inputs(model, batch, settings.set_key), training=False)
    sets, masks = out["sets"].numpy(), out["masks"].numpy()
    target, target_mask = batch[settings.set_key].numpy(), batch["mask"].numpy()
    count = min(4, sets.shape[1])
    if settings.set_key == "set":
        rows = [visualize.set_progression(sets[:, i], masks[:, i], target[i], target_mask[i]) for i in range(count)]
        tf.summary.image("progression/sets", np.stack(rows), step=step, max_outputs=count)
        return
    if "image" not in batch:  # The state auto-encoder: objects seen from above.
        rows = [visualize.state_progression(sets[:, i], masks[:, i], target[i], target_mask[i], clevr.ATTRIBUTES)
                for i in range(count)]
        tf.summary.image("progression/states", np.stack(rows), step=step, max_outputs=count)
        tables = [visualize.state_table(sets[-1, i], masks[-1, i], target[i], target_mask[i], clevr.ATTRIBUTES)
                  for i in range(count)]
        tf.summary.text("progression/state_tables", "\n\n".join(tables), step=step)
        return
    images = batch["image"].numpy()
    if settings.set_key == "boxes":
        rows = [visualize.boxes_progression(images[i], sets[:, i], masks[:, i], target[i], target_mask[i])
                for i in range(count)]
        tf.summary.image("progression/boxes", np.stack(rows), step=step, max_outputs=count)
    else:
        tables = [visualize.state_table(sets[-1, i], masks[-1, i], target[i], target_mask[i], clevr.ATTRIBUTES)
                  for i in range(count)]
        tf.summary.text("progression/states", "\n\n".join(tables), step=step)
        tf.summary.image("progression/images", images[:count], step=step, max_outputs=count)


def _write_eval(writer, results, step):
    with writer.as_default(step=step):
        for iters, row in results.items():
            for name, value in row.items():
                if name != "num_examples":
                    tf.summary.scalar(f"eval/{name}/iters_{iters}", value)


def run_evaluation(model, writer, step):
    settings = common.loss_settings()
    results = evaluation.evaluate(model, _eval_data(), set_key=settings.set_key, iters_list=common.eval_iters())
    _write_eval(writer, results, step)
    return results


def main(argv):
    del argv
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(FLAGS.seed)
    strategy = common.make_strategy()
    settings = common.loss_settings()
    os.makedirs(FLAGS.model_dir, exist_ok=True)
    with open(os.path.join(FLAGS.model_dir, "flags.txt"), "w") as f:
        f.write(FLAGS.flags_into_string())

    train_ds, train_size = _train_data(strategy)
    total_steps = _total_steps(train_size)
    schedule = common.parse_iters_schedule(FLAGS.iters_schedule, total_steps, FLAGS.iters)
    keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    with strategy.scope():
        model = common.build_model()
        optimizer = keras.optimizers.Adam(common.learning_rate(total_steps), epsilon=1e-8)
        if FLAGS.mixed_precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # The Trainer scales the loss.
        optimizer.build(model.trainable_variables)
    # Outside the scope: a host-side counter, not a mirrored variable.
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    iterator = iter(train_ds)
    state = {"model": model, "optimizer": optimizer, "step": step}
    if _workers(strategy)[0] == 1:
        # The input position is part of the checkpoint, so a resumed run sees
        # the batches an uninterrupted one would. With several workers each
        # has its own shard and position, which one shared checkpoint cannot
        # hold: they restart their input pipelines instead.
        state["iterator"] = iterator
    checkpoint = tf.train.Checkpoint(**state)
    chief = _is_chief(strategy)
    shared_dir = os.path.join(FLAGS.model_dir, "checkpoints")
    # Saving is collective under multi-worker strategies: every worker writes,
    # but only the chief into the run directory (the others into scratch).
    own_dir = shared_dir if chief else os.path.join(FLAGS.model_dir, f".worker-{os.getpid()}", "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, own_dir, max_to_keep=FLAGS.keep_checkpoints)
    latest = tf.train.latest_checkpoint(shared_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        print(f"Resumed from {latest} at step {int(step)}.", flush=True)
    trainer = Trainer(model, optimizer, settings, global_batch_size=FLAGS.batch_size, strategy=strategy,
                      run_eagerly=FLAGS.run_eagerly, jit_compile=FLAGS.jit_compile)
    if chief:
        train_writer = tf.summary.create_file_writer(os.path.join(FLAGS.model_dir, "train"))
        eval_writer = tf.summary.create_file_writer(os.path.join(FLAGS.model_dir, "eval"))
    else:
        train_writer = eval_writer = tf.summary.create_noop_writer()
    picture_batch = next(iter(_eval_data()))

    print(f"Training {FLAGS.decoder} on {FLAGS.dataset} ({train_size} examples) for {total_steps} steps.", flush=True)
    progbar = keras.utils.Progbar(total_steps, stateful_metrics=["loss"], verbose=1 if FLAGS.progress else 0)
    progbar.update(int(step))
    start, first_step = time.time(), int(step)
    running = None
    while int(step) < total_steps:
        iters = common.iters_at(schedule, int(step)) if FLAGS.decoder == "dspn" else None
        values = trainer.train_step(split_for_replicas(strategy, next(iterator), FLAGS.batch_size), iters=iters)
        loss = float(values["train/loss"])
        if FLAGS.nan_at_step is not None and int(step) + 1 == FLAGS.nan_at_step:
            loss = float("nan")
        if not math.isfinite(loss):
            # The update of this step is not saved: the newest checkpoint on
            # disk is the last good state.
            raise NonFiniteLossError(
                f"The loss became {loss} at step {int(step) + 1}; stopping. The last good checkpoint is "
                f"{manager.latest_checkpoint or '(none yet)'} and was left untouched.")
        step.assign_add(1)
        current = int(step)
        running = loss if running is None else 0.98 * running + 0.02 * loss
        progbar.update(current, values=[("loss", running)])
        if current % FLAGS.log_every == 0 or current == total_steps:
            with train_writer.as_default(step=current):
                for name in ("train/loss", "train/set_loss", "train/repr_loss"):
                    tf.summary.scalar(name, values[name])
                for t, (inner, norm) in enumerate(zip(values["inner_loss"].numpy(), values["inner_grad_norm"].numpy())):
                    tf.summary.scalar(f"inner/loss_step_{t}", inner)
                    tf.summary.scalar(f"inner/grad_norm_step_{t}", norm)
                lr = optimizer.learning_rate
                tf.summary.scalar("train/learning_rate", lr(optimizer.iterations) if callable(lr) else lr)
        if (FLAGS.image_every and current % FLAGS.image_every == 0) or current == total_steps:
            with train_writer.as_default(step=current):
                _write_pictures(model, picture_batch, current)
        if current % FLAGS.checkpoint_every == 0 or current == total_steps:
            manager.save(checkpoint_number=current)
        if FLAGS.eval_every and current % FLAGS.eval_every == 0 and current < total_steps:
            run_evaluation(model, eval_writer, current)
    elapsed = time.time() - start
    steps_run = int(step) - first_step
    if steps_run:
        print(f"Trained {steps_run} steps in {elapsed:.1f} s ({elapsed / steps_run:.3f} s/step); "
              f"{trainer.traces} trace(s) of the train step.", flush=True)
    if not FLAGS.evaluate_at_end or not chief:
        return
    results = run_evaluation(model, eval_writer, int(step))
    path = os.path.join(FLAGS.model_dir, "eval_results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"dataset": FLAGS.dataset, "decoder": FLAGS.decoder, "step": int(step), "results": results},
                  f, indent=2)
    os.replace(path + ".tmp", path)
    title = f"{FLAGS.decoder} on {FLAGS.dataset}, step {int(step)}, {next(iter(results.values()))['num_examples']} eval examples"
    print(evaluation.format_table(results, title))
    print(f"Results written to {path}")
    print(_next_steps())


def _next_steps():
    """What to run next, printed after the results table."""
    # absl consumes --flagfile while parsing, so read it from the command line.
    flagfiles = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--flagfile=")]
    flagfile = flagfiles[-1] if flagfiles else None
    model_dir = FLAGS.model_dir
    lines = [f"TensorBoard (losses, AP, pictures of every inner step): tensorboard --logdir {model_dir}"]
    if flagfile and FLAGS.decoder == "dspn" and flagfile.endswith("_dspn.cfg"):
        baseline = flagfile[:-len("_dspn.cfg")] + "_mlp.cfg"
        if os.path.isfile(baseline):
            lines.insert(0, f"MLP baseline with the same budget: python -m train.train --flagfile={baseline}")
    export = f"python -m train.export --flagfile={flagfile}" if flagfile else "python -m train.export <same flags>"
    lines.append(f"Export for TF Serving: {export} --model_dir={model_dir}")
    return "\n".join(lines)


def run():
    try:
        app.run(main)
    except NonFiniteLossError as e:
        logging.error("%s", e)
        sys.exit(3)


if __name__ == "__main__":
    run()
