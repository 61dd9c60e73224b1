"""Machine-readable phase events of a training run: one JSON line per phase in `--model_dir/run_events.jsonl`.

The loop appends a line when a start begins, resumes from a checkpoint, starts
training, saves a checkpoint, starts and ends an evaluation, ends training and
ends the run. Each line is a JSON object with `event` (the phase), `time` (Unix
seconds), `pid` (the writing process) and the phase's fields, e.g.

    {"event": "checkpoint", "time": 1767225600.25, "pid": 4242, "step": 10}

Tools that act on a run's phases (`tools/kill_drill.py`) read these lines rather
than the printed sentences, which are for people and may change. A file rather
than tagged lines on stdout: the console output stays as it is, the record
survives the process and is read the same way whatever captured the output, and a
reader tells the starts of one run apart by `pid` or by the file size when a start
began. Only the chief of a multi-worker run writes (the run directory is shared).

Every line is appended with one `write` on a file opened with `O_APPEND` and is
visible to readers at once (no buffering); a reader skips a line it cannot parse
(a disk that filled up mid-line).
"""

import json
import os
import time

from absl import logging

FILENAME = "run_events.jsonl"

# The phases the training entry point records, in the order a run passes them.
START = "start"  # The entry point began (flags read, before any data is built).
RESUMED = "resumed"  # A checkpoint was restored: `step`, `checkpoint`.
TRAINING = "training"  # Data and model are built; training steps begin: `step`, `total_steps`.
CHECKPOINT = "checkpoint"  # The checkpoint of `step` is completely written.
EVALUATING = "evaluating"  # An evaluation of `step` began.
EVALUATED = "evaluated"  # That evaluation ended.
TRAINED = "trained"  # The training steps are done: `step`.
DONE = "done"  # The run ended normally (after the final evaluation and results): `step`.


def path_in(model_dir):
    """The events file of the run directory `model_dir`."""
    return os.path.join(model_dir, FILENAME)


def emit(model_dir, event, *, chief=True, **fields):
    """Appends one event line to `model_dir`'s events file (on the chief only).

    Args:
        model_dir: The run directory (created if missing).
        event: The phase, e.g. `events.CHECKPOINT`.
        chief: Whether this process is the run's chief; other workers write nothing.
        **fields: JSON-serialisable values of the phase (e.g. `step=10`).
    """
    if not chief:
        return
    record = {"event": event, "time": round(time.time(), 3), "pid": os.getpid(), **fields}
    line = (json.dumps(record) + "\n").encode()
    try:
        os.makedirs(model_dir, exist_ok=True)
        fd = os.open(path_in(model_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:  # A record for tools: the run goes on without it (a full disk fails the checkpoint instead).
        logging.warning("Could not record the %r event in %s: %s", event, path_in(model_dir), e)


def size(model_dir):
    """The current length in bytes of `model_dir`'s events file (0 if there is none): an offset for `read`."""
    try:
        return os.path.getsize(path_in(model_dir))
    except FileNotFoundError:
        return 0


def read(model_dir, offset=0):
    """The complete event lines of `model_dir`'s events file from byte `offset` on.

    Args:
        model_dir: The run directory.
        offset: Where to start reading (e.g. `size` taken before a start began).

    Returns:
        `(events, next_offset)`: a list of event dicts in file order (lines that do
        not parse are skipped) and the offset after the last complete line, to
        pass to the next call while the file grows.
    """
    try:
        with open(path_in(model_dir), "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # A line still being written is left for the next call.
    found = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record:
            found.append(record)
    return found, offset + end
