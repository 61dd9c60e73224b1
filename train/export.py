r"""Exports a trained model as a SavedModel for TF applications and TF Serving.

    python -m train.export --flagfile=configs/clevr_state_dspn.cfg \
        [--checkpoint_dir=runs/clevr_state_dspn/checkpoints] [--export_base=exports/clevr_state_dspn] \
        [--keep_versions=3] [--all_steps] [--max_iters=100]

The training flagfile rebuilds the model (`train.common.build_model`); the
newest checkpoint of --checkpoint_dir (default `<model_dir>/checkpoints`) is
restored into it and `dspn_tf.export.export_model` writes the next version
`<export_base>/<version>/`. Flags of the flagfile that only the trainer
defines (checkpoint cadence and the like) are ignored with a notice.
"""

import os
import sys

from absl import app, flags, logging
import tensorflow as tf

from dspn_tf import export
from train import common

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint_dir", None, "Checkpoints to export from (default: <model_dir>/checkpoints).")
flags.DEFINE_string("export_base", None, "TF Serving model base path (default: <model_dir>/export).")
flags.DEFINE_integer("keep_versions", 0, "Keep only the newest this many versions in --export_base (0: keep all).")
flags.DEFINE_bool("all_steps", False, "Also export serving_all_steps / decode_all_steps (every inner step).")
flags.DEFINE_bool("export_keras", True, "Also write <version>/assets.extra/model.keras.")
flags.DEFINE_integer("max_iters", 100, "Largest `iters` a request may ask for.")


def restore(model, checkpoint_dir=None, checkpoint=None):
    """Restores the model's weights (not the optimizer's) from a training checkpoint; returns its path."""
    path = checkpoint or tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise FileNotFoundError(f"No checkpoint in {checkpoint_dir!r}.")
    status = tf.train.Checkpoint(model=model).read(path)
    # Every model variable must come from the checkpoint; optimizer slots,
    # the step and the data iterator are in it too and are not needed.
    status.expect_partial().assert_existing_objects_matched()
    return path


def main(argv):
    del argv
    checkpoint_dir = FLAGS.checkpoint_dir or os.path.join(FLAGS.model_dir, "checkpoints")
    export_base = FLAGS.export_base or os.path.join(FLAGS.model_dir, "export")
    model = common.build_model(FLAGS)
    path = restore(model, checkpoint_dir, FLAGS.checkpoint)
    version_dir = export.export_model(
        model, export_base, keep=FLAGS.keep_versions or None, all_steps=FLAGS.all_steps,
        save_keras=FLAGS.export_keras, max_iters=FLAGS.max_iters)
    print(f"Exported {path} to {version_dir}", flush=True)


def _parse_flags(argv):
    # The training flagfile also sets flags only train/train.py defines;
    # parse what this program knows and name the rest.
    rest = FLAGS(argv, known_only=True)
    unknown = [arg for arg in rest[1:] if arg.startswith("-")]
    if unknown:
        logging.warning("Ignoring flags this exporter does not define: %s", " ".join(unknown))
    return [rest[0]] + [arg for arg in rest[1:] if not arg.startswith("-")]


def run():
    app.run(main, argv=sys.argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
