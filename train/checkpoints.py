"""Checkpoint restore and results files, shared by train, evaluate and export."""

import json
import os

import tensorflow as tf


def restore(objects, checkpoint_dir, checkpoint=None, *, required=True, partial=True):
    """Restores `objects` from `checkpoint`, else the newest checkpoint in `checkpoint_dir`.

    Args:
        objects: `{name: trackable}` as saved by training: `model`, and for a
            resume also `optimizer`, `step` and `iterator`.
        checkpoint_dir: Folder of a `tf.train.CheckpointManager`.
        checkpoint: A specific checkpoint prefix (overrides `checkpoint_dir`).
        required: Raise if there is no checkpoint (else return None).
        partial: Allow the checkpoint to hold more than `objects` (the
            optimizer slots, step and iterator when only the model is read).
            Every variable of `objects` must come from it either way.

    Returns:
        The checkpoint path, or None if there is none and `required` is False.

    Raises:
        FileNotFoundError: naming the folder if there is no checkpoint and `required`.
        AssertionError: if a variable of `objects` is not in the checkpoint (a config that does not match it).
    """
    path = checkpoint or (tf.train.latest_checkpoint(checkpoint_dir) if checkpoint_dir else None)
    if path is None:
        if required:
            raise FileNotFoundError(f"No checkpoint in {checkpoint_dir!r}; train first or pass --checkpoint.")
        return None
    status = tf.train.Checkpoint(**objects).restore(path)
    if partial:
        status = status.expect_partial()
    status.assert_existing_objects_matched()
    return path


def write_results(path, payload):
    """Writes `payload` as JSON to `path` atomically (temp file + rename), so a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(path + ".tmp", path)
