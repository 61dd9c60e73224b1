r"""Trains a DSPN (or a baseline decoder) and evaluates it.

    python -m train.train --flagfile=configs/clevr_mini_state_dspn.cfg [--flag=value ...]

Restarting the same command resumes from the newest checkpoint in --model_dir.
"""

from train import startup  # noqa: F401  First: keeps TensorFlow's C++ start-up logging out (train/startup.py).

# isort: split
import json
import os
import shlex
import sys

import keras
from absl import app, logging

from dspn_tf import evaluation
from dspn_tf.training import Trainer, is_chief
from train import checkpoints, events, hparams, set_scaling
from train import config as config_lib
from train import loop as loop_lib
from train.loop import NonFiniteLossError, WorkerLostError

__all__ = ["NonFiniteLossError", "WorkerLostError", "main", "run"]


def main(argv):
    del argv
    config = config_lib.from_flags()
    kept = config_lib.saved_inner_lr(config)  # A resumed --inner_lr=auto run keeps its step.
    inner_lr_kept = kept is not None and config.model.inner_lr_auto
    config = kept or config
    config_lib.set_seeds(config)
    strategy = config_lib.make_strategy(config)
    settings = config_lib.loss_settings(config)
    os.makedirs(config.run.model_dir, exist_ok=True)
    checkpoints.write_run_file(strategy, os.path.join(config.run.model_dir, "flags.txt"), config.flags_text)
    events.emit(config.run.model_dir, events.START, chief=is_chief(strategy))

    train_ds, train_size = config_lib.train_batches(config, strategy)
    total = config_lib.total_steps(config, train_size)
    schedule = config_lib.iters_schedule(config, total)
    keras.mixed_precision.set_global_policy(config.model.mixed_precision)
    with strategy.scope():
        model = config_lib.build_model(config)
        optimizer = config_lib.build_optimizer(config, model, total)
    eval_ds = config_lib.eval_batches(config)
    trainer = Trainer(
        model,
        optimizer,
        settings,
        global_batch_size=config.optimization.batch_size,
        strategy=strategy,
        run_eagerly=config.run.run_eagerly,
        jit_compile=config.run.jit_compile,
    )
    loop, evaluate = make_loop(config, trainer, train_ds, eval_ds, total, schedule)
    resumed = loop.restore() is not None
    loop.drop_stale_events()
    loop.open_writers()
    print(describe_run(config, model, train_size, total), flush=True)
    scale = set_scaling.prepare(config, model, resumed=resumed)
    if scale:
        print(scale, flush=True)
    if inner_lr_kept:
        inner_lr_note = f"Inner step size: {config.model.inner.lr:g} (--inner_lr=auto, chosen when the run started)."
    else:
        # After normalisation is set up: the suggestion reads the sets in the model's units.
        config, inner_lr_note = choose_inner_lr(config, model, eval_ds, strategy)
    if inner_lr_note:
        print(inner_lr_note, flush=True)
    events.emit(config.run.model_dir, events.TRAINING, chief=loop.chief, step=int(loop.step), total_steps=total)
    if loop.chief:  # The settings on TensorBoard's HParams dashboard (train/hparams.py).
        hparams.log_settings(
            config.run.model_dir,
            hparams.settings_of(config, settings, total_steps=total, train_examples=train_size),
        )
    train_loss = loop.run()
    events.emit(config.run.model_dir, events.TRAINED, chief=loop.chief, step=int(loop.step))
    if loop.chief:
        results = evaluate.evaluate(loop) if config.run.evaluate_at_end else {}
        if results:
            report(config, results, int(loop.step))
        hparams.log_results(config.run.model_dir, results, step=int(loop.step), train_loss=train_loss)
    events.emit(config.run.model_dir, events.DONE, chief=loop.chief, step=int(loop.step))


def choose_inner_lr(config, model, eval_ds, strategy):
    """Resolves --inner_lr=auto for a new run: the step of `dspn_tf.suggest_inner_lr`, set on the model.

    The suggestion reads the model as built (before any checkpoint is restored)
    and the first evaluation batch; the chief keeps it in `<model_dir>/inner_lr.json`,
    which a resumed run, train.evaluate and train.export read instead.

    Returns:
        `(config, note)`: the config with the chosen step (unchanged if there was
        nothing to choose) and the line to print at the start of the run, or None.
    """
    if not config.model.inner_lr_auto:
        return config, None
    if not model.iterative:
        return config, f"--inner_lr=auto: the {config.model.decoder} decoder has no inner loop; nothing to choose."
    lr = config_lib.suggested_inner_lr(config, model, next(iter(eval_ds)))
    model.decoder.lr = lr
    path = config_lib.inner_lr_path(config)
    checkpoints.write_run_file(strategy, path, json.dumps({"inner_lr": lr, "rule": "dspn_tf.suggest_inner_lr"}) + "\n")
    note = (
        f"Inner step size: {lr:g} (--inner_lr=auto: dspn_tf.suggest_inner_lr for the initial model and the first "
        f"evaluation batch; the DSPN paper's step is 25). Kept in {path}."
    )
    return config_lib.with_inner_lr(config, lr), note


def make_loop(config, trainer, train_ds, eval_ds, total, schedule):
    """The run's `Loop` with its actions (scalars, pictures, checkpoints, evaluation), and its `Evaluate`.

    Neither touches the disk; the entry point restores, drops stale events and
    opens the writers next (`Loop`).
    """
    model, cadence = trainer.model, config.run
    evaluate = loop_lib.Evaluate(
        model,
        eval_ds,
        set_key=trainer.settings.set_key,
        iters_list=config_lib.eval_iters(config, model.iterative),
        every=cadence.eval_every,
        metric=config_lib.task(config).eval_metric,
    )
    actions = [
        loop_lib.WriteScalars(cadence.log_every),
        loop_lib.WritePictures(model, next(iter(eval_ds)), config_lib.task(config), cadence.image_every),
        loop_lib.SaveCheckpoint(cadence.checkpoint_every),
        evaluate,
    ]
    loop = loop_lib.Loop(
        trainer,
        iter(train_ds),
        total_steps=total,
        model_dir=cadence.model_dir,
        actions=actions,
        schedule=schedule,
        keep_checkpoints=cadence.keep_checkpoints,
        progress=cadence.progress,
    )
    return loop, evaluate


def describe_run(config, model, train_size, total):
    """What the run uses, printed before the first step: data, model size, step budget."""
    data, batch_size = config.data, config.optimization.batch_size
    source = data.data_source
    if source in ("generated", "tfds") or config_lib.task(config).caches_folders:
        source += f", cache {config_lib.cache_dir(config)}"
    inner = f", {config.model.inner.iters} inner steps" if model.iterative else ""
    epochs = total * batch_size / train_size
    return "\n".join(
        [
            f"Data: {data.dataset} from {source}: {train_size:,} training examples.",
            f"Model: {type(model).__name__} with a {config.model.decoder} decoder{inner}, "
            f"{model.count_params():,} parameters.",
            f"Budget: {total:,} steps of batch {batch_size} ({epochs:.1f} epochs); "
            f"run directory {config.run.model_dir}.",
        ]
    )


def report(config, results, step):
    """Writes `eval_results.json` and prints the table and what to run next."""
    dataset, decoder = config.data.dataset, config.model.decoder
    path = os.path.join(config.run.model_dir, "eval_results.json")
    checkpoints.write_results(path, {"dataset": dataset, "decoder": decoder, "step": step, "results": results})
    examples = next(iter(results.values()))["num_examples"]
    print(evaluation.format_table(results, f"{decoder} on {dataset}, step {step}, {examples} eval examples"))
    print(f"Results written to {path}")
    print(next_steps(config))


def _without_model_dir(args):
    """Command-line arguments less `--model_dir=DIR` / `--model_dir DIR` (absl takes one or two dashes)."""
    kept, skip = [], False
    for arg in args:
        name = arg.lstrip("-").split("=", 1)[0]
        if skip:
            skip = False
        elif arg.startswith("-") and name == "model_dir":
            skip = "=" not in arg
        else:
            kept.append(arg)
    return kept


def next_steps(config):
    """What to run next, printed after the results table.

    The commands repeat the flags given after the flagfile (e.g. `--data_source`,
    `--train_steps`), so the baseline gets the same data and budget and the export
    rebuilds the same model; the baseline keeps its own flagfile's `--model_dir`.
    """
    flagfile, model_dir = config.flagfile, config.run.model_dir
    extra = "".join(" " + shlex.quote(a) for a in _without_model_dir(config.overrides))
    measured = config_lib.task(config).metric
    lines = [f"TensorBoard (losses, {measured}, pictures of every inner step): tensorboard --logdir {model_dir}"]
    if flagfile and config.model.iterative and flagfile.endswith("_dspn.cfg"):
        baseline = flagfile[: -len("_dspn.cfg")] + "_mlp.cfg"
        if os.path.isfile(baseline):
            lines.insert(0, f"MLP baseline with the same budget: python -m train.train --flagfile={baseline}{extra}")
    export = (
        f"python -m train.export --flagfile={flagfile}{extra}" if flagfile else "python -m train.export <same flags>"
    )
    if config_lib.task(config).kind != "set_to_set":  # A set-to-set model is not exported (dspn_tf.models.SetToSet).
        lines.append(f"Export for TF Serving: {export} --model_dir={model_dir}")
    return "\n".join(lines)


def run():
    try:
        app.run(main)
    except NonFiniteLossError as e:
        logging.error("%s", e)
        sys.exit(3)
    except WorkerLostError as e:
        logging.error("%s", e)
        sys.exit(4)


if __name__ == "__main__":
    run()
