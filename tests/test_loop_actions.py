"""train/loop.py as Orbit's controller: construction touches nothing, the named steps prepare a run, actions run when due."""

import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf.models import build_model
from dspn_tf.training import LossSettings, Trainer
from train import loop as loop_lib


def _trainer():
    model = build_model("autoencoder", decoder="dspn", set_size=4, set_channels=2, dim=8, latent=4, iters=2)
    model.build_on_zeros()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    return Trainer(model, optimizer, LossSettings(set_key="set", loss="chamfer"), global_batch_size=4)


def _batches():
    rng = np.random.default_rng(0)
    points = rng.random((16, 4, 2), dtype=np.float32)
    return tf.data.Dataset.from_tensor_slices({"set": points, "mask": np.ones((16, 4), np.float32)}).batch(4).repeat()


class Count(loop_lib.Action):
    """An action defined outside the loop: counts the steps it ran after (None: redone on resume)."""

    redo_on_resume = True

    def __init__(self, every):
        self.every, self.steps = every, []

    def due(self, step, total):
        return step % self.every == 0 and step != total

    def __call__(self, loop, step, values):
        self.steps.append(None if values is None else step)


def _loop(trainer, model_dir, total, actions):
    return loop_lib.Loop(
        trainer, iter(_batches()), total_steps=total, model_dir=model_dir, actions=actions, progress=False
    )


def test_construction_touches_nothing_and_the_named_steps_prepare_the_run(tmp_path):
    model_dir = str(tmp_path / "run")
    count = Count(every=2)
    loop = _loop(_trainer(), model_dir, 4, [loop_lib.WriteScalars(1), loop_lib.SaveCheckpoint(2), count])
    assert not os.path.exists(model_dir)
    assert loop.restore() is None and int(loop.step) == 0
    assert loop.drop_stale_events() == 0
    loop.open_writers()
    loop.run()
    assert int(loop.step) == 4 and count.steps == [2]
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == sorted(
        ["checkpoint", *(f"ckpt-{n}.{ext}" for n in (2, 4) for ext in ("index", "data-00000-of-00001"))]
    )
    assert os.listdir(os.path.join(model_dir, "train")) and os.path.isdir(os.path.join(model_dir, "eval"))

    # A resumed run at step 2 of 6 redoes the action due there (it ran after the checkpoint), then goes on.
    count = Count(every=2)
    loop = _loop(_trainer(), model_dir, 6, [loop_lib.SaveCheckpoint(2), count])
    assert loop.restore().endswith("ckpt-4") and int(loop.step) == 4
    loop.drop_stale_events()
    loop.open_writers()
    loop.run()
    assert count.steps == [None]  # Step 4 redone; 6 is the last step.


@pytest.mark.parametrize(
    "action, due_steps",
    [
        (loop_lib.WriteScalars(3), [3, 6, 7]),
        (loop_lib.WritePictures(None, None, None, 3), [3, 6, 7]),
        (loop_lib.WritePictures(None, None, None, 0), [7]),
        (loop_lib.SaveCheckpoint(2), [2, 4, 6, 7]),
        (loop_lib.Evaluate(None, None, set_key="set", iters_list=[1], every=2), [2, 4, 6]),
        (loop_lib.Evaluate(None, None, set_key="set", iters_list=[1], every=0), []),
    ],
)
def test_when_each_action_is_due(action, due_steps):
    assert [step for step in range(1, 8) if action.due(step, 7)] == due_steps


def _fake_trainer(workers, index, split):
    """A trainer on worker `index` of `workers` (one replica each), as `Trainer` and its strategy describe it."""
    strategy = types.SimpleNamespace(
        num_replicas_in_sync=workers,
        extended=types.SimpleNamespace(worker_devices=[f"/job:worker/task:{index}/device:CPU:0"]),
        cluster_resolver=types.SimpleNamespace(task_type="worker" if workers > 1 else None, task_id=index),
    )
    return types.SimpleNamespace(
        workers=workers, worker_index=index, global_batch_size=4, strategy=strategy, split=split
    )


def test_worker_batch_is_the_one_split():
    batch = {"set": tf.reshape(tf.range(8.0), [4, 2])}
    assert loop_lib.worker_batch(_fake_trainer(1, 0, lambda b: b), batch) is batch
    tag, rows = loop_lib.worker_batch(_fake_trainer(2, 1, lambda b: ("split", b)), batch)
    assert tag == "split" and rows["set"].numpy().tolist() == [[4.0, 5.0], [6.0, 7.0]]
