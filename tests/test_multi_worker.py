"""Two workers of --strategy=multi_worker on this machine over loopback (issue 13), and the run-level files.

The first test has three phases, each a pair of real `python -m train.train` processes with
`TF_CONFIG` naming 127.0.0.1 ports: (1) train until the chief's second checkpoint,
then SIGKILL the other worker: the chief must stop with `WorkerLostError`'s message
and exit code 4 within a bounded time; (2) restart both: they resume from the chief's
newest checkpoint and finish; (3) a single process trains the same number of steps
on the same global batch: its loss at every step equals the two workers'.
The others check that only the chief writes run-level files (flags.txt, results),
that concurrent atomic writes of one file never share a temporary name, and the
split of a global batch into a worker's rows (issue 22).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import batch_losses, cluster, loss_settings, training
from tests.test_train import ROOT
from train import checkpoints, events

sys.path.insert(0, os.path.join(ROOT, "tools"))
import kill_drill  # noqa: E402  (its TensorBoard event reader)

FLAGS = [
    "--flagfile=configs/clevr_mini_state_autoencoder_dspn.cfg",
    "--dim=16",
    "--latent=16",
    "--iters=2",
    "--batch_size=8",
    "--generated_train=64",
    "--generated_val=16",
    "--checkpoint_every=3",
    "--log_every=1",
    "--image_every=0",
    "--eval_iters=1,2",
    "--noevaluate_at_end",
    "--noprogress",
    "--deterministic",
]
LOST_WITHIN = 60  # Seconds the surviving worker may take to notice and stop.


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(model_dir, cache, log_dir, tag, *extra):
    ports = _free_ports(2)
    procs = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "PYTHONUNBUFFERED": "1"}
        log = open(os.path.join(log_dir, f"{tag}-worker{index}.log"), "w")
        argv = [*FLAGS, "--strategy=multi_worker", f"--model_dir={model_dir}", f"--cache_dir={cache}", *extra]
        procs.append(
            subprocess.Popen([sys.executable, "-m", "train.train", *argv], cwd=ROOT, env=env, stdout=log, stderr=log)
        )
    return procs


def _log(log_dir, tag, index):
    with open(os.path.join(log_dir, f"{tag}-worker{index}.log")) as f:
        return f.read()


def _wait_all(procs, timeout):
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _losses(model_dir):
    events = kill_drill._events(os.path.join(model_dir, "train"))
    return {step: values for (tag, step), values in events.items() if tag == "train/loss"}


def test_two_workers_lose_one_resume_and_equal_one_process(tmp_path):
    if not hasattr(socket, "AF_INET"):
        pytest.skip("no TCP sockets on this platform")
    logs, cache, model_dir = str(tmp_path), str(tmp_path / "cache"), str(tmp_path / "two_workers")
    checkpoint = os.path.join(model_dir, "checkpoints", "ckpt-6.index")

    # (1) Kill the non-chief worker once the chief has written its second checkpoint.
    procs = _workers(model_dir, cache, logs, "first", "--train_steps=100000")
    chiefs = [procs[0].pid]
    try:
        deadline = time.time() + 240
        while not os.path.exists(checkpoint) and time.time() < deadline and procs[0].poll() is None:
            time.sleep(0.05)
        assert os.path.exists(checkpoint), _log(logs, "first", 0)[-3000:]
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        code = procs[0].wait(timeout=LOST_WITHIN)
        took = time.time() - killed
    finally:
        _wait_all(procs, 10)
    chief = _log(logs, "first", 0)
    assert code == 4, chief[-3000:]
    assert "Another worker of the cluster stopped" in chief and "Restart every worker" in chief, chief[-3000:]
    assert "Traceback" not in chief, chief[-3000:]
    print(f"chief stopped {took:.1f} s after the other worker was killed")
    resume_step = max(
        int(m) for m in re.findall(r"ckpt-(\d+)\.index", " ".join(os.listdir(os.path.dirname(checkpoint))))
    )
    target = resume_step + 3

    # (2) Restart both: they resume from the chief's newest checkpoint and finish.
    procs = _workers(model_dir, cache, logs, "restart", f"--train_steps={target}")
    chiefs.append(procs[0].pid)
    codes = _wait_all(procs, 240)
    for index in range(2):
        text = _log(logs, "restart", index)
        assert codes[index] == 0, text[-3000:]
        assert re.search(rf"Resumed from \S+/checkpoints/ckpt-{resume_step} at step {resume_step}\.", text), text[
            -3000:
        ]

    # Run-level files came from the chief alone: its phase events only, no temporary left behind.
    found, _ = events.read(model_dir)
    assert {e["pid"] for e in found} == set(chiefs), found
    phases = [(e["event"], e.get("step")) for e in found if e["pid"] == chiefs[1]]
    assert phases[:2] == [("start", None), ("resumed", resume_step)] and phases[-1] == ("done", target), phases
    assert os.path.isfile(os.path.join(model_dir, "flags.txt"))
    assert not [name for name in os.listdir(model_dir) if ".tmp" in name]

    # (3) One process, the same global batch and steps.
    single = str(tmp_path / "single")
    argv = [*FLAGS, f"--model_dir={single}", f"--cache_dir={cache}", f"--train_steps={target}"]
    done = subprocess.run(
        [sys.executable, "-m", "train.train", *argv], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    two, one = _losses(model_dir), _losses(single)
    assert sorted(two) == sorted(one) == list(range(1, target + 1))
    assert all(len(v) == 1 for v in two.values())  # One curve: the steps after the kill were logged once.
    error = max(abs(two[s][0] - one[s][0]) for s in one)
    print(f"max |loss(2 workers) - loss(1 process)| over {target} steps: {error:.3g}")
    assert error < 1e-5


def _worker_strategy(task_id, workers=2, local_replicas=1):
    """What `dspn_tf.cluster` reads of a multi-worker strategy: its replicas, local devices and task."""
    return types.SimpleNamespace(
        cluster_resolver=types.SimpleNamespace(task_type="worker", task_id=task_id),
        num_replicas_in_sync=workers * local_replicas,
        extended=types.SimpleNamespace(worker_devices=[f"/cpu:{i}" for i in range(local_replicas)]),
    )


def test_only_the_chief_writes_run_level_files(tmp_path):
    path = str(tmp_path / "flags.txt")
    assert not checkpoints.write_run_file(_worker_strategy(1), path, "--from_worker_1\n")
    assert os.listdir(tmp_path) == []
    assert checkpoints.write_run_file(_worker_strategy(0), path, "--from_worker_0\n")
    assert checkpoints.write_run_file(tf.distribute.get_strategy(), path, "--single\n")
    assert os.listdir(tmp_path) == ["flags.txt"]
    with open(path) as f:
        assert f.read() == "--single\n"


def test_concurrent_atomic_writes_of_one_file_never_collide(tmp_path):
    # The same process (one pid) in several threads: the random part of the temporary name keeps them apart.
    path, errors = str(tmp_path / "eval_results.json"), []
    contents = [{"writer": w, "payload": "x" * 5000} for w in range(4)]

    def write(payload):
        try:
            for _ in range(100):
                checkpoints.write_results(path, payload)
        except Exception as e:  # noqa: BLE001  Reported by the assertion below.
            errors.append(e)

    threads = [threading.Thread(target=write, args=(payload,)) for payload in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open(path) as f:
        assert json.load(f) in contents  # One writer's whole file.
    assert os.listdir(tmp_path) == ["eval_results.json"]  # No temporaries left.


def test_atomic_write_keeps_the_old_file_and_removes_a_dead_writers_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "flags.txt")
    checkpoints.write_atomic(path, "old\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f"flags.txt.tmp-{socket.gethostname()}-{dead.pid}-0123abcd"
    leftover.write_text("half of a killed writer's file")
    live = tmp_path / f"flags.txt.tmp-{socket.gethostname()}-{os.getpid()}-0123abcd"
    live.write_text("a live writer's file")

    def fail(src, dst):
        raise OSError("simulated failure of the rename")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="simulated"):
            checkpoints.write_atomic(path, "new\n")
    assert sorted(os.listdir(tmp_path)) == ["flags.txt", live.name]
    with open(path) as f:
        assert f.read() == "old\n"


def test_each_worker_trains_on_its_own_rows_of_the_global_batch():
    batch = {"set": np.arange(24, dtype=np.float32).reshape(8, 3), "mask": np.arange(8, dtype=np.float32)}
    single = tf.distribute.get_strategy()
    assert cluster.worker_rows(single, batch, 8) is batch
    seen = []
    for index in range(2):
        strategy = _worker_strategy(index, workers=2, local_replicas=2)
        assert cluster.workers(strategy) == (2, index, 2)
        rows = cluster.worker_rows(strategy, batch, 8)
        np.testing.assert_array_equal(rows["set"], batch["set"][4 * index : 4 * index + 4])
        seen += list(np.asarray(rows["mask"]))
    assert seen == list(range(8))  # Together the workers cover the global batch once.


def test_the_parts_of_training_are_importable_from_dspn_tf_training_as_before():
    homes = {
        loss_settings: ["LossSettings"],
        batch_losses: ["check_settings", "per_sample_losses", "loss_and_gradients"],
        cluster: ["cluster_task", "is_chief", "workers", "worker_rows", "split_for_replicas"],
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(training, name) is getattr(module, name), name
    assert sorted(training.__all__) == sorted(["Trainer", *(n for names in homes.values() for n in names)])
