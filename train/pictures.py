r"""Writes progression pictures of a trained run as a PNG (for documentation and reports).

    python -m train.pictures --flagfile=configs/clevr_mini_state_autoencoder_dspn.cfg \
        --output=docs/images/state_autoencoder.png [--checkpoint=PATH] [--picture_examples=3] \
        [--baseline_model_dir=runs/clevr_mini_state_autoencoder_mlp]

Restores the run's newest checkpoint (or --checkpoint), decodes the first
held-out examples with the largest --eval_iters and stacks one row per
example: the prediction at every inner step, then the truth. set-MNIST sets
are drawn as points with their mask as darkness; CLEVR object states of the
auto-encoder from above, and of the image task on the image (at their
projected 3D positions), with the predicted colour, shape, size and material
and the mask as opacity; CLEVR boxes on the image. With --baseline_model_dir
(e.g. the MLP baseline's run), that run's prediction is drawn after the inner
steps and before the truth, as in the paper's Figure 1.
"""

from train import startup  # noqa: F401  First: keeps TensorFlow's C++ start-up logging out (train/startup.py).

# isort: split
import os

import numpy as np
import tensorflow as tf
from absl import app

from train import checkpoints, loop
from train import config as config_lib


def _decode(model, batch, set_key, iters):
    out = model(model.inputs_of(batch, set_key), iters=iters if model.iterative else None, training=False)
    return out["sets"].numpy(), out["masks"].numpy()


def progression_rows(model, batch, task, iters, count, baseline=None):
    """One picture row (uint8 `[H, W, 3]`) per example: every inner step, then the truth.

    With a `baseline` model, its final prediction is drawn after the steps and before the truth.
    """
    sets, masks = _decode(model, batch, task.set_key, iters)
    other = None
    if baseline is not None:
        other_sets, other_masks = _decode(baseline, batch, task.set_key, iters)
        other = (other_sets[-1], other_masks[-1])
    return loop.progression_rows(sets, masks, batch, task, count, baseline=other)


def stack_rows(rows, gap=4):
    """Rows of possibly different widths stacked vertically on white."""
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        canvas = np.full((r.shape[0] + gap, width, 3), 255, np.uint8)
        canvas[: r.shape[0], : r.shape[1]] = r
        padded.append(canvas)
    return np.concatenate(padded, axis=0)[:-gap]


def load_baseline(config):
    """The model of the run in --baseline_model_dir (from its flags.txt), restored from its newest checkpoint."""
    folder = config.pictures.baseline_model_dir
    flags_file = os.path.join(folder, "flags.txt")
    if not os.path.isfile(flags_file):
        raise FileNotFoundError(
            f"train.pictures: --baseline_model_dir={folder} has no flags.txt; give the folder of a training run."
        )
    other = config_lib.load(flags_file, f"--model_dir={folder}")
    mine, theirs = config_lib.task(config), config_lib.task(other)
    if (mine.set_key, mine.set_size, mine.set_channels) != (theirs.set_key, theirs.set_size, theirs.set_channels):
        raise ValueError(
            f"train.pictures: --baseline_model_dir={folder} is a {other.data.dataset} run; this run is {config.data.dataset}."
        )
    model = config_lib.build_model(config_lib.resolved_inner_lr(other))
    checkpoints.restore({"model": model}, os.path.join(folder, "checkpoints"), None)
    return model


def main(argv):
    del argv
    config = config_lib.resolved_inner_lr(config_lib.from_flags())
    output = config.evaluation.output
    if not output:
        raise ValueError("train.pictures: set --output to the PNG file to write.")
    model = config_lib.build_model(config)
    step = tf.Variable(0, dtype=tf.int64, name="step")
    path = checkpoints.restore(
        {"model": model, "step": step}, os.path.join(config.run.model_dir, "checkpoints"), config.evaluation.checkpoint
    )
    baseline = load_baseline(config) if config.pictures.baseline_model_dir else None
    batch = next(iter(config_lib.eval_batches(config)))
    iters = max(config_lib.eval_iters(config, model.iterative))
    picture = stack_rows(
        progression_rows(model, batch, config_lib.task(config), iters, config.pictures.picture_examples, baseline)
    )
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tf.io.write_file(output, tf.io.encode_png(picture))
    print(
        f"Wrote {picture.shape[1]}x{picture.shape[0]} px of {path} (step {int(step)}, {iters} inner steps) to {output}"
    )


if __name__ == "__main__":
    app.run(main)
