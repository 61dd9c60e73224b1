"""The kill drill (tools/kill_drill.py) in short, and the TensorBoard purge it relies on (issue 13).

The drill finds its kill moments from the run's phase events (train/events.py), not from
its printed sentences, and fails when fewer kills land than asked (issue 22).
"""

import json
import os
import random
import signal
import struct
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.test_train import ROOT
from train import events, summaries

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
    assert report["kills_survived"] == report["kills_landed"] == 3
    assert {hit["moment"] for hit in report["kills"]} >= {"step", "checkpoint"}
    assert report["final_checkpoint"] == "ckpt-20"
    assert report["max_abs_weight_difference"] == 0.0
    assert report["final_loss"] == report["reference_final_loss"]
    assert report["train_duplicated_points"] == 0 and report["train_points"] > 0


def test_the_drill_fails_naming_how_many_kills_landed_when_fewer_land_than_asked(tmp_path, monkeypatch, capsys):
    # No evaluation ever comes, so a kill at evaluation cannot land: the run ends with 0 of 1 kills.
    overrides = [
        *(flag for flag in TINY_DRILL if not flag.startswith(("--train_steps", "--eval_every", "--image_every"))),
        "--train_steps=2",
        "--eval_every=0",
        "--image_every=0",
        "--noevaluate_at_end",
    ]
    workdir, report_file = str(tmp_path / "drill"), str(tmp_path / "report.json")
    argv = ["kill_drill.py", f"--workdir={workdir}", "--kills=1", "--moments=evaluation", f"--report={report_file}"]
    monkeypatch.setattr(sys, "argv", [*argv, "--", *overrides])
    with pytest.raises(SystemExit) as exited:
        kill_drill.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    with open(report_file) as f:
        report = json.load(f)
    assert report["kills_landed"] == 0 and report["ended_before_all_kills"]
    assert any(f.startswith("only 0 of 1 kills landed") for f in report["failures"]), report["failures"]
    assert "0 of 1 kills landed" in err


# A stand-in for `python -m train.train` that prints nothing: it writes only the phase events
# and checkpoint files the drill looks at (a `<prefix>_temp` folder while a save runs).
SILENT_RUN = """
import os, sys, time
from train import events
model_dir = sys.argv[1]
folder = os.path.join(model_dir, "checkpoints")
os.makedirs(folder, exist_ok=True)
events.emit(model_dir, events.START)
if len(sys.argv) > 2:
    events.emit(model_dir, events.RESUMED, step=int(sys.argv[2]), checkpoint="ckpt-" + sys.argv[2])
events.emit(model_dir, events.TRAINING, step=0, total_steps=1000)
for step in range(1, 1000):
    time.sleep(0.02)
    temp = os.path.join(folder, f"ckpt-{step}_temp")
    os.makedirs(temp, exist_ok=True)
    time.sleep(0.02)
    os.rmdir(temp)
    open(os.path.join(folder, f"ckpt-{step}.index"), "w").close()
    events.emit(model_dir, events.CHECKPOINT, step=step)
    if step % 3 == 0:
        events.emit(model_dir, events.EVALUATING, step=step)
        time.sleep(0.1)
        events.emit(model_dir, events.EVALUATED, step=step)
"""


def _silent_start(model_dir, *args):
    return kill_drill.Start([sys.executable, "-c", SILENT_RUN, model_dir, *args], model_dir)


def test_kill_moments_come_from_the_phase_events_not_the_printed_sentences(tmp_path):
    timing = {"data": 1.0, "steps": 0.3, "evaluation": 0.05}
    for moment in ("step", "checkpoint", "evaluation"):
        model_dir = str(tmp_path / moment / "run")
        start = _silent_start(model_dir)
        hit = kill_drill._kill_at(start, moment, random.Random(0), model_dir, str(tmp_path / "cache"), timing)
        assert hit is not None, (moment, start.text())
        assert hit["moment"] in (moment, "after evaluation") and hit["exit_code"] == -signal.SIGKILL
        assert hit["last_event"]["event"] in (events.TRAINING, events.CHECKPOINT, events.EVALUATING, events.EVALUATED)
        assert start.text() == ""  # Nothing printed: the moments came from run_events.jsonl.

    # A start that resumes from an older checkpoint than the newest on disk (one was skipped) is a failure.
    model_dir = str(tmp_path / "step" / "run")
    newest = kill_drill.newest_checkpoint_step(model_dir)
    assert newest > 0
    for resumed, problem in ((newest, None), (newest - 1, f"resumed at step {newest - 1}")):
        start = _silent_start(model_dir, str(resumed))
        assert start.wait_for_event(events.TRAINING, timeout=60) is not None
        start.kill()
        found = kill_drill._resume_problem(start, 2)
        assert found is None if problem is None else problem in found, found


def test_phase_events_are_read_per_start_and_a_torn_line_is_skipped(tmp_path):
    model_dir = str(tmp_path)
    events.emit(model_dir, events.CHECKPOINT, step=5)
    events.emit(model_dir, events.CHECKPOINT, chief=False, step=6)  # A non-chief worker writes nothing.
    offset = events.size(model_dir)
    with open(events.path_in(model_dir), "ab") as f:
        f.write(b'{"event": "checkp')  # A line still being written (or torn by a full disk).
    found, after = events.read(model_dir)
    assert [(e["event"], e["step"], e["pid"]) for e in found] == [("checkpoint", 5, os.getpid())]
    assert after == offset
    with open(events.path_in(model_dir), "ab") as f:
        f.write(b"\n")
    events.emit(model_dir, events.DONE, step=5)
    found, _ = events.read(model_dir, after)
    assert [e["event"] for e in found] == ["done"]


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
