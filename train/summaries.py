"""Keeps a resumed run's TensorBoard logs to one curve: events newer than the resume step are dropped.

A run killed between two checkpoints has logged the steps after its last
checkpoint; the resumed run logs those steps again (different values unless
`--deterministic`), so TensorBoard would draw two curves over them. TensorBoard's
own remedy, a `SessionLog.START` event purging the steps at and after it, is
honoured only by the Python event accumulator (for tensors only, and not for the
first such event of a run); the Rust data server TensorBoard uses by default
does not purge. So the loop rewrites the event files instead: before it writes
anything after a resume, every event of a step past the resume step is removed
from the files the killed run left, which works for every reader.

Each file is rewritten to a temporary name and renamed over the original, so a
kill during the rewrite leaves either the old file or the purged one; a torn
last record (a writer killed mid-write) is dropped with the stale events.
"""

import glob
import os
import struct

from tensorboard.compat.proto import event_pb2

_HEADER = 12  # uint64 length + uint32 masked CRC of the length.
_FOOTER = 4  # uint32 masked CRC of the data.


def read_records(path):
    """The complete TFRecord records of `path` as `(raw bytes, event)`; a torn tail is left out."""
    with open(path, "rb") as f:
        data = f.read()
    records, offset = [], 0
    while offset + _HEADER <= len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        end = offset + _HEADER + length + _FOOTER
        if end > len(data):
            break
        event = event_pb2.Event()
        try:
            event.ParseFromString(data[offset + _HEADER : offset + _HEADER + length])
        except Exception:  # noqa: BLE001  A torn or garbled record ends the readable part.
            break
        records.append((data[offset:end], event))
        offset = end
    return records, offset < len(data)


def purge_after(log_dir, step):
    """Removes every event of a step > `step` from the event files in `log_dir`; returns how many.

    Events without summaries (the file-version header) are kept whatever their step.
    """
    # Not named like an event file: TensorBoard reads any file with "tfevents" in its name.
    tmp = os.path.join(log_dir, ".purging.tmp")
    if os.path.exists(tmp):  # Left by a run killed during its purge; the original is intact.
        os.remove(tmp)
    removed = 0
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        records, torn = read_records(path)
        kept = [raw for raw, event in records if not (event.HasField("summary") and event.step > step)]
        dropped = len(records) - len(kept)
        if not dropped and not torn:
            continue
        with open(tmp, "wb") as f:
            f.write(b"".join(kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        removed += dropped
    return removed
