"""The random-set configs through train.train on tiny widths: the validation metric is logged, and a run resumes."""

import json
import os

import pytest
import tensorflow as tf

from tests.test_train import ROOT, loss_by_step, run, scalars

TINY = [
    "--dim=16",
    "--latent=16",
    "--objective_dim=12",
    "--iters=2",
    "--batch_size=8",
    "--generated_train=32",
    "--generated_val=12",
    "--log_every=1",
    "--noprogress",
    "--image_every=0",
]


def eval_values(model_dir, tag="eval/hungarian/iters_10"):
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in scalars(model_dir, "eval").Tensors(tag)}


@pytest.mark.parametrize("name", ["random_sets_idspn_momentum", "random_sets_dspn"])
def test_a_run_logs_the_validation_metric(tmp_path, capsys, name):
    model_dir = str(tmp_path / "run")
    flagfile = os.path.join(ROOT, f"configs/{name}.cfg")
    run([f"--flagfile={flagfile}", *TINY, "--train_steps=4", "--eval_every=2", f"--model_dir={model_dir}"])
    # Every --eval_every steps and at the end, at the configs' --eval_iters=10.
    values = eval_values(model_dir)
    assert sorted(values) == [2, 4] and all(0 < v < 10 for v in values.values())
    results = json.load(open(os.path.join(model_dir, "eval_results.json")))
    assert results["dataset"] == "random_sets" and results["step"] == 4
    assert results["results"]["10"]["num_examples"] == 12
    assert results["results"]["10"]["hungarian"] == pytest.approx(values[4], rel=1e-6)
    # The run's logs have it too: printed, and in run_events.jsonl.
    with open(os.path.join(model_dir, "run_events.jsonl")) as f:
        evaluated = [json.loads(line) for line in f if '"evaluated"' in line]
    assert [e["step"] for e in evaluated] == [2, 4]
    at_2 = evaluated[0]["results"]["10"]["hungarian"]
    assert at_2 == pytest.approx(values[2], rel=1e-6)
    assert f"Evaluated step 2: hungarian {at_2:.6g} at 10 inner steps" in capsys.readouterr().out


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path):
    common = [
        "--flagfile=" + os.path.join(ROOT, "configs/random_sets_idspn_momentum.cfg"),
        *TINY,
        "--deterministic",
        "--checkpoint_every=2",
        "--noevaluate_at_end",
    ]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run([*common, f"--model_dir={straight}", "--train_steps=4"])
    run([*common, f"--model_dir={resumed}", "--train_steps=2"])  # The "killed" run: stops after a checkpoint.
    run([*common, f"--model_dir={resumed}", "--train_steps=4"])
    a, b = loss_by_step(straight), loss_by_step(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert a[step] == b[step], (step, a[step], b[step])
