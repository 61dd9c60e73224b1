"""The kill drill (tools/kill_drill.py) in short, and the TensorBoard purge it relies on (issue 13)."""

import os
import struct
import sys

import numpy as np
import tensorflow as tf

from tests.test_train import ROOT
from train import summaries

sys.path.insert(0, os.path.join(ROOT, "tools"))
import kill_drill  # noqa: E402

TINY_DRILL = (
    "--dim=16",
    "--latent=16",
    "--iters=2",
    "--batch_size=8",
    "--generated_train=64",
    "--generated_val=16",
    "--train_steps=20",
    "--checkpoint_every=5",
    "--eval_every=10",
    "--eval_iters=1,2",
    "--log_every=1",
    "--image_every=10",
    "--deterministic",
    "--noprogress",
)


def test_short_kill_drill_ends_like_an_uninterrupted_run(tmp_path):
    report = kill_drill.drill(str(tmp_path), kills=3, overrides=TINY_DRILL, seed=3, max_starts=8, log=lambda _: None)
    assert report["failures"] == [], report
    assert report["kills_survived"] == 3
    assert {hit["moment"] for hit in report["kills"]} >= {"step", "checkpoint"}
    assert report["final_checkpoint"] == "ckpt-20"
    assert report["max_abs_weight_difference"] == 0.0
    assert report["final_loss"] == report["reference_final_loss"]
    assert report["train_duplicated_points"] == 0 and report["train_points"] > 0


def _write_events(log_dir, steps):
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        for step in steps:
            tf.summary.scalar("train/loss", float(step), step=step)
    writer.close()


def _steps(log_dir):
    events = kill_drill._events(log_dir)
    return sorted(step for tag, step in events for _ in events[(tag, step)])


def test_purge_drops_steps_after_the_resume_step_and_a_torn_record(tmp_path):
    log_dir = str(tmp_path)
    _write_events(log_dir, range(1, 9))  # The killed run: steps 1..8, checkpoint at 5.
    (path,) = [os.path.join(log_dir, n) for n in os.listdir(log_dir)]
    with open(path, "ab") as f:  # Killed mid-record: a length header and half a payload.
        f.write(struct.pack("<Q", 100) + b"\0" * 4 + b"x" * 30)
    assert summaries.read_records(path)[1]  # Torn.
    with open(os.path.join(log_dir, ".purging.tmp"), "wb") as f:
        f.write(b"left by a kill during a purge")
    assert summaries.purge_after(log_dir, 5) == 3
    assert not os.path.exists(os.path.join(log_dir, ".purging.tmp"))
    records, torn = summaries.read_records(path)
    assert not torn and records[0][1].HasField("file_version")
    _write_events(log_dir, range(6, 9))  # The resumed run.
    assert _steps(log_dir) == list(range(1, 9))
    values = kill_drill._events(log_dir)
    assert [values[("train/loss", s)] for s in range(1, 9)] == [[float(s)] for s in range(1, 9)]
    assert summaries.purge_after(log_dir, 8) == 0  # Nothing stale: the files are left alone.
    assert np.all(np.diff(_steps(log_dir)) == 1)
