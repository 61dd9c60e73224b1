"""Checkpoint restore and results files, shared by train, evaluate and export."""

import glob
import json
import os
import re
import secrets
import shutil
import socket

import tensorflow as tf
from absl import logging

from dspn_tf.cluster import is_chief
from dspn_tf.export import pid_alive


class CheckpointUnreadableError(ValueError):
    """A checkpoint file is truncated, corrupted or missing; the message names the file."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint was written by another model configuration than the one built from the flags."""


def restore(objects, checkpoint_dir, checkpoint=None, *, required=True, partial=True, resume=False):
    """Restores `objects` from `checkpoint`, else the newest readable checkpoint in `checkpoint_dir`.

    Every tensor of a checkpoint is read (and its checksum verified) before it
    is restored. Without an explicit `checkpoint`, an unreadable newest
    checkpoint is skipped with a warning naming the bad file, and the next
    newest is tried.

    Args:
        objects: `{name: trackable}` as saved by training: `model`, and for a
            resume also `optimizer`, `step` and `iterator`.
        checkpoint_dir: Folder of a `tf.train.CheckpointManager`.
        checkpoint: A specific checkpoint prefix (overrides `checkpoint_dir`;
            no fallback: an unreadable one is an error).
        required: Raise if there is no checkpoint (else return None).
        partial: Allow the checkpoint to hold more than `objects` (the
            optimizer slots, step and iterator when only the model is read).
            Every variable of `objects` must come from it either way.
        resume: The caller resumes training in the run directory holding
            `checkpoint_dir` (only changes the wording of a mismatch error).

    Returns:
        The checkpoint path, or None if there is none and `required` is False.

    Raises:
        FileNotFoundError: naming the folder if there is no checkpoint and `required`.
        CheckpointUnreadableError: naming the file, if `checkpoint` is unreadable, or if every
            checkpoint of `checkpoint_dir` is.
        CheckpointMismatchError: if the checkpoint does not fit `objects` (another configuration).
    """
    candidates = [checkpoint] if checkpoint else _candidates(checkpoint_dir)
    bad = []
    for path in candidates:
        problem = _unreadable(path)
        if problem is None:
            try:
                _restore_into(objects, path, partial, resume, checkpoint_dir)
            except tf.errors.OpError as e:  # E.g. a damaged iterator state (not checked by `_unreadable`).
                problem = f"{_data_files(path)} damaged: restoring it failed ({_first_line(e)})"
        if problem is None:
            if bad:
                print(f"Falling back to {path}; unreadable newer checkpoint(s): {', '.join(bad)}.", flush=True)
            return path
        if checkpoint:
            raise CheckpointUnreadableError(
                f"The checkpoint given by --checkpoint={checkpoint} is unreadable: {problem}"
            )
        logging.warning("Skipping unreadable checkpoint %s: %s", path, problem)
        print(f"Skipping unreadable checkpoint {path}: {problem}", flush=True)
        bad.append(path)
    if bad:
        raise CheckpointUnreadableError(
            f"Every checkpoint in {checkpoint_dir} is unreadable ({', '.join(bad)}); move them away to start afresh."
        )
    if required:
        raise FileNotFoundError(f"No checkpoint in {checkpoint_dir!r}; train first or pass --checkpoint.")
    return None


def remove_interrupted_saves(checkpoint_dir):
    """Deletes the `<prefix>_temp` folders of saves that were killed before TF merged them; returns them.

    TF writes a checkpoint's shards there and removes the folder once the
    checkpoint is complete, so a leftover one is never part of a checkpoint.
    Call it only while no save is running in `checkpoint_dir`.
    """
    leftovers = sorted(glob.glob(os.path.join(glob.escape(checkpoint_dir), "*_temp")))
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


def _restore_into(objects, path, partial, resume, checkpoint_dir):
    """Restores a readable checkpoint; a configuration mismatch raises `CheckpointMismatchError`."""
    try:
        _check_set_scaling(objects, path)
        status = tf.train.Checkpoint(**objects).restore(path)
        if partial:
            status = status.expect_partial()
        status.assert_existing_objects_matched()
    except (ValueError, AssertionError) as e:
        detail = _first_line(e)
        options = (
            "another --dim, --latent, --decoder, --decoder_dim, --set_encoder, --image_encoder, --inner_gradient "
            "or --normalize_sets"
        )
        if resume:
            run_dir = os.path.dirname(os.path.abspath(checkpoint_dir))
            message = (
                f"Cannot resume the run directory {run_dir}: its checkpoint {path} was written by a different "
                f"model configuration than these flags ({options}). Start this configuration in a fresh "
                f"--model_dir, or rerun with the flags that run was trained with. (TensorFlow: {detail})"
            )
        else:
            message = (
                f"The checkpoint {path} does not fit the model built from these flags: it was written by a "
                f"different model configuration ({options}). Pass the flags it was trained with (its run's "
                f"--flagfile) or a checkpoint of this configuration. (TensorFlow: {detail})"
            )
        raise CheckpointMismatchError(message) from e


def _check_set_scaling(objects, path):
    """Refuses a checkpoint with set-normalisation statistics for a model without them.

    A partial restore would skip them silently, and the model would return sets
    in its normalised units (the other way round, `assert_existing_objects_matched` fails).

    Raises:
        ValueError: if the checkpoint holds `model/set_scaling` and the model has no `set_scaling`.
    """
    model = objects.get("model")
    if model is None or getattr(model, "set_scaling", None) is not None:
        return
    if any(name.startswith("model/set_scaling/") for name, _ in tf.train.list_variables(path)):
        raise ValueError("the checkpoint holds set-normalisation statistics (--normalize_sets) the model lacks.")


def _candidates(checkpoint_dir):
    """Checkpoint prefixes of `checkpoint_dir`, newest first: the manager's list, then any other `*.index`."""
    if not checkpoint_dir or not os.path.isdir(checkpoint_dir):
        return []
    listed = []
    try:
        state = tf.train.get_checkpoint_state(checkpoint_dir)
        if state is not None:
            listed = list(reversed(state.all_model_checkpoint_paths)) or [state.model_checkpoint_path]
    except (tf.errors.OpError, ValueError) as e:  # The `checkpoint` state file itself is damaged.
        logging.warning(
            "The checkpoint list %s is unreadable (%s); looking for checkpoint files instead.",
            os.path.join(checkpoint_dir, "checkpoint"),
            e,
        )
    listed = [p if os.path.isabs(p) else os.path.join(checkpoint_dir, p) for p in listed]
    found = [name[: -len(".index")] for name in glob.glob(os.path.join(checkpoint_dir, "*.index"))]
    found.sort(key=_number, reverse=True)
    return list(dict.fromkeys(listed + [p for p in found if p not in listed]))


def _number(prefix):
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def _unreadable(path):
    """None if every tensor of checkpoint `path` reads back with a good checksum, else which file is bad and why."""
    index = path + ".index"
    if not os.path.isfile(index):
        return f"{index} is missing"
    # Any failure to read is a damaged file (TF raises OpErrors, ValueError,
    # IndexError for a short read, ...), so every exception counts.
    try:
        reader = tf.train.load_checkpoint(path)
    except Exception as e:  # noqa: BLE001
        return f"{index} is damaged ({_first_line(e)})"
    try:
        for key, dtype in reader.get_variable_to_dtype_map().items():
            if dtype == tf.variant:  # The input iterator's state has no NumPy form: read it as a tensor.
                tf.raw_ops.RestoreV2(prefix=path, tensor_names=[key], shape_and_slices=[""], dtypes=[dtype])
            else:
                reader.get_tensor(key)
    except Exception as e:  # noqa: BLE001
        return f"{_data_files(path)} damaged ({_first_line(e)})"
    return None


def _data_files(path):
    return ", ".join(sorted(glob.glob(glob.escape(path) + ".data-*")) or [path + ".data-*"])


def _first_line(error):
    text = getattr(error, "message", None) or str(error)
    return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__


def write_results(path, payload):
    """Writes `payload` as JSON to `path` atomically (`write_atomic`), so a reader never sees half a file."""
    write_atomic(path, json.dumps(payload, indent=2))


def write_run_file(strategy, path, text):
    """Writes a run-level file (e.g. `flags.txt`) of `strategy`'s run atomically, on its chief only.

    The workers of a multi-worker run share the run directory, so only the chief
    (`dspn_tf.cluster.is_chief`) writes the files that describe the whole run.

    Args:
        strategy: The run's `tf.distribute.Strategy`.
        path: The file to write.
        text: Its contents.

    Returns:
        True if this process wrote the file, False on a non-chief worker.
    """
    if not is_chief(strategy):
        return False
    write_atomic(path, text)
    return True


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file in the same folder and a rename.

    A reader, or a process killed mid-write, sees the previous file or the new one,
    never part of one. The temporary name (`<name>.tmp-<host>-<pid>-<random>`) is
    created exclusively, so concurrent writers never share one; the last rename wins.
    Temporaries of writers on this host that died before their rename are removed.
    """
    folder, name = os.path.split(os.path.abspath(path))
    _remove_dead_temporaries(folder, name)
    while True:
        tmp = os.path.join(folder, f"{name}.tmp-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            # Mode 0o666 less the umask, as `open(path, "w")` gives (mkstemp's files are 0o600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            pass
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _remove_dead_temporaries(folder, name):
    """Removes `write_atomic` temporaries of `name` whose writer ran on this host and is gone."""
    pattern = re.compile(re.escape(name) + r"\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
    host = socket.gethostname()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for other in names:
        match = pattern.match(other)
        if match and match.group("host") == host and not pid_alive(int(match.group("pid"))):
            try:
                os.remove(os.path.join(folder, other))
            except OSError:
                pass
