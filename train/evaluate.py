r"""Evaluates a trained checkpoint at several numbers of inner steps.

    python -m train.evaluate --flagfile=configs/clevr_mini_state_dspn.cfg [--checkpoint=PATH] \
        [--eval_iters=10,20,30] [--output=results.json]

Box AP (IoU 0.5 … 0.95), state AP (inf, 1, 0.5, 0.25, 0.125; DSPN reference
definition, docs/algorithm.md), Chamfer (set-MNIST) or the features-only Hungarian loss (random_sets),
written as JSON and printed.
"""

from train import startup  # noqa: F401  First: keeps TensorFlow's C++ start-up logging out (train/startup.py).

# isort: split
import os

import tensorflow as tf
from absl import app

from dspn_tf import evaluation
from train import checkpoints
from train import config as config_lib


def main(argv):
    del argv
    config = config_lib.resolved_inner_lr(config_lib.from_flags())
    model = config_lib.build_model(config)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    # Only the model and step are read; optimizer and iterator are skipped.
    options = config.evaluation
    path = checkpoints.restore(
        {"model": model, "step": step}, os.path.join(config.run.model_dir, "checkpoints"), options.checkpoint
    )
    step = int(step)
    results = evaluation.evaluate(
        model,
        config_lib.eval_batches(config),
        set_key=config_lib.task(config).set_key,
        iters_list=config_lib.eval_iters(config, model.iterative),
        metric=config_lib.task(config).eval_metric,
    )
    output = options.output or os.path.join(config.run.model_dir, f"eval_results_{step}.json")
    dataset, decoder = config.data.dataset, config.model.decoder
    checkpoints.write_results(
        output, {"dataset": dataset, "decoder": decoder, "checkpoint": path, "step": step, "results": results}
    )
    print(evaluation.format_table(results, f"{decoder} on {dataset}, {path}"))
    print(f"Results written to {output}")


if __name__ == "__main__":
    app.run(main)
