r"""Evaluates a trained checkpoint at several numbers of inner steps.

    python -m train.evaluate --flagfile=configs/clevr_mini_state_dspn.cfg [--checkpoint=PATH] \
        [--eval_iters=10,20,30] [--output=results.json]

Box AP (IoU 0.5 … 0.95), state AP (inf, 1, 0.5, 0.25, 0.125; DSPN reference
definition, SPEC §8) or Chamfer (set-MNIST), written as JSON and printed.
"""

import json
import os

from absl import app, flags
import tensorflow as tf

from dspn_tf import evaluation
from train import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Results JSON (default: --model_dir/eval_results_<step>.json).")


def restore(model, model_dir, checkpoint=None):
    """Restores model weights; returns (checkpoint path, step)."""
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if not path:
        raise FileNotFoundError(f"No checkpoint in {os.path.join(model_dir, 'checkpoints')}; train first or pass --checkpoint.")
    step = tf.Variable(0, dtype=tf.int64, name="step")
    # Only the model and step are read; optimizer and iterator are skipped.
    tf.train.Checkpoint(model=model, step=step).restore(path).expect_partial().assert_existing_objects_matched()
    return path, int(step)


def main(argv):
    del argv
    model = common.build_model()
    path, step = restore(model, FLAGS.model_dir, FLAGS.checkpoint)
    settings = common.loss_settings()
    dataset = common.build_split("eval")
    if FLAGS.max_eval_examples:
        dataset = dataset.take(FLAGS.max_eval_examples)
    dataset = dataset.batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE)
    results = evaluation.evaluate(model, dataset, set_key=settings.set_key, iters_list=common.eval_iters())
    output = FLAGS.output or os.path.join(FLAGS.model_dir, f"eval_results_{step}.json")
    with open(output + ".tmp", "w") as f:
        json.dump({"dataset": FLAGS.dataset, "decoder": FLAGS.decoder, "checkpoint": path, "step": step,
                   "results": results}, f, indent=2)
    os.replace(output + ".tmp", output)
    print(evaluation.format_table(results, f"{FLAGS.decoder} on {FLAGS.dataset}, {path}"))
    print(f"Results written to {output}")


if __name__ == "__main__":
    app.run(main)
