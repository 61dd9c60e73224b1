r"""Trains a DSPN (or a baseline decoder) and evaluates it.

    python -m train.train --flagfile=configs/clevr_mini_state_dspn.cfg [--flag=value ...]

Restarting the same command resumes from the newest checkpoint in --model_dir.
"""

from train import startup  # noqa: F401  First: keeps TensorFlow's C++ start-up logging out (train/startup.py).

# isort: split
import os
import shlex
import sys

import keras
from absl import app, logging

from dspn_tf import evaluation
from dspn_tf.training import Trainer, is_chief
from train import checkpoints, events, hparams
from train import config as config_lib
from train.loop import Loop, NonFiniteLossError, WorkerLostError

__all__ = ["NonFiniteLossError", "WorkerLostError", "main", "run"]


def main(argv):
    del argv
    config = config_lib.from_flags()
    config_lib.set_seeds(config)
    strategy = config_lib.make_strategy(config)
    settings = config_lib.loss_settings(config)
    os.makedirs(config.model_dir, exist_ok=True)
    checkpoints.write_run_file(strategy, os.path.join(config.model_dir, "flags.txt"), config.flags_text)
    events.emit(config.model_dir, events.START, chief=is_chief(strategy))

    train_ds, train_size = config_lib.train_batches(config, strategy)
    total = config_lib.total_steps(config, train_size)
    schedule = config_lib.iters_schedule(config, total)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    with strategy.scope():
        model = config_lib.build_model(config)
        optimizer = config_lib.build_optimizer(config, model, total)
    trainer = Trainer(
        model,
        optimizer,
        settings,
        global_batch_size=config.batch_size,
        strategy=strategy,
        run_eagerly=config.run_eagerly,
        jit_compile=config.jit_compile,
    )
    loop = Loop(config, trainer, iter(train_ds), config_lib.eval_batches(config), total_steps=total, schedule=schedule)
    print(describe_run(config, model, train_size, total), flush=True)
    events.emit(config.model_dir, events.TRAINING, chief=loop.chief, step=int(loop.step), total_steps=total)
    if loop.chief:  # The settings on TensorBoard's HParams dashboard (train/hparams.py).
        hparams.log_settings(
            config.model_dir, hparams.settings_of(config, settings, total_steps=total, train_examples=train_size)
        )
    train_loss = loop.run()
    events.emit(config.model_dir, events.TRAINED, chief=loop.chief, step=int(loop.step))
    if loop.chief:
        results = loop.evaluate() if config.evaluate_at_end else {}
        if results:
            report(config, results, int(loop.step))
        hparams.log_results(config.model_dir, results, step=int(loop.step), train_loss=train_loss)
    events.emit(config.model_dir, events.DONE, chief=loop.chief, step=int(loop.step))


def describe_run(config, model, train_size, total):
    """What the run uses, printed before the first step: data, model size, step budget."""
    source = config.data_source
    if source in ("generated", "tfds") or config.dataset == "clevr_state_autoencoder":
        source += f", cache {config_lib.cache_dir(config)}"
    inner = f", {config.iters} inner steps" if config.decoder == "dspn" else ""
    epochs = total * config.batch_size / train_size
    return "\n".join(
        [
            f"Data: {config.dataset} from {source}: {train_size:,} training examples.",
            f"Model: {type(model).__name__} with a {config.decoder} decoder{inner}, {model.count_params():,} parameters.",
            f"Budget: {total:,} steps of batch {config.batch_size} ({epochs:.1f} epochs); "
            f"run directory {config.model_dir}.",
        ]
    )


def report(config, results, step):
    """Writes `eval_results.json` and prints the table and what to run next."""
    path = os.path.join(config.model_dir, "eval_results.json")
    checkpoints.write_results(
        path, {"dataset": config.dataset, "decoder": config.decoder, "step": step, "results": results}
    )
    examples = next(iter(results.values()))["num_examples"]
    print(
        evaluation.format_table(results, f"{config.decoder} on {config.dataset}, step {step}, {examples} eval examples")
    )
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
    flagfile, model_dir = config.flagfile, config.model_dir
    extra = "".join(" " + shlex.quote(a) for a in _without_model_dir(config.overrides))
    measured = "Chamfer" if config.dataset == "set_mnist" else "AP"
    lines = [f"TensorBoard (losses, {measured}, pictures of every inner step): tensorboard --logdir {model_dir}"]
    if flagfile and config.decoder == "dspn" and flagfile.endswith("_dspn.cfg"):
        baseline = flagfile[: -len("_dspn.cfg")] + "_mlp.cfg"
        if os.path.isfile(baseline):
            lines.insert(0, f"MLP baseline with the same budget: python -m train.train --flagfile={baseline}{extra}")
    export = (
        f"python -m train.export --flagfile={flagfile}{extra}" if flagfile else "python -m train.export <same flags>"
    )
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
