r"""Exports a trained model as a SavedModel for TF applications and TF Serving.

    python -m train.export --flagfile=configs/clevr_state_dspn.cfg \
        [--checkpoint_dir=runs/clevr_state_dspn/checkpoints] [--export_base=exports/clevr_state_dspn] \
        [--keep_versions=3] [--all_steps] [--max_iters=100]

The training flagfile rebuilds the model (`train.config.build_model`); the
newest checkpoint of --checkpoint_dir (default `<model_dir>/checkpoints`) is
restored into it and `dspn_tf.export.export_model` writes the next version
`<export_base>/<version>/`.
"""

from train import startup  # noqa: F401  First: keeps TensorFlow's C++ start-up logging out (train/startup.py).

# isort: split
import os

from absl import app

from dspn_tf import export
from train import checkpoints
from train import config as config_lib


def main(argv):
    del argv
    config = config_lib.resolved_inner_lr(config_lib.from_flags())
    options, model_dir = config.export, config.run.model_dir
    checkpoint_dir = options.checkpoint_dir or os.path.join(model_dir, "checkpoints")
    export_base = options.export_base or os.path.join(model_dir, "export")
    model = config_lib.build_model(config)
    # Every model variable must come from the checkpoint; optimizer slots,
    # the step and the data iterator are in it too and are not needed.
    path = checkpoints.restore({"model": model}, checkpoint_dir, config.evaluation.checkpoint)
    version_dir = export.export_model(
        model,
        export_base,
        keep=options.keep_versions or None,
        all_steps=options.all_steps,
        save_keras=options.export_keras,
        max_iters=options.max_iters,
    )
    print(f"Exported {path} to {version_dir}", flush=True)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
