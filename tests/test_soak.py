"""A short soak (tools/soak.py): the train step is traced once however the loop's cadences interleave."""

import os
import sys

from tests.test_train import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
import soak  # noqa: E402

TINY_SOAK = (
    "--dim=16",
    "--latent=16",
    "--iters=2",
    "--batch_size=8",
    "--generated_train=64",
    "--generated_val=16",
    "--eval_iters=1,2",
    "--checkpoint_every=10",
    "--image_every=15",
    "--eval_every=20",
    "--log_every=5",
)


def test_short_soak_traces_the_train_step_once(tmp_path):
    report = soak.soak(str(tmp_path), steps=60, baseline_step=12, overrides=TINY_SOAK, timeout=300)
    assert report["traces"] == 1, report
    assert report["steps"] == 60 and report["baseline_step"] == 12
    assert len(report["samples"]) == 20  # A progress line every 5 % of the steps, each with its RSS.
    assert all(s["rss_mb"] > 50 for s in report["samples"])
    assert report["s_per_step_first_quarter"] > 0


def test_repeated_evaluation_reuses_one_trace_and_frees_the_model():
    import gc

    import numpy as np
    import tensorflow as tf

    import dspn_tf
    from dspn_tf import evaluation
    from dspn_tf.models import SetAutoEncoder

    rng = np.random.default_rng(0)
    data = {"set": rng.normal(size=(20, 5, 2)).astype(np.float32), "mask": np.ones((20, 5), np.float32)}
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(8)  # 8, 8 and a last batch of 4.
    encoder = dspn_tf.FSEncoder(dim=8, latent=4)
    model = SetAutoEncoder(dspn_tf.DSPN(encoder, set_size=5, set_channels=2, iters=3), encoder)
    first = evaluation.evaluate(model, dataset, set_key="set", iters_list=[1, 3])
    run = evaluation._RUNNERS[model]
    traces = run.experimental_get_tracing_count()
    assert traces >= 1  # The full batch (twice if it built the model), the relaxed shape of the last one.
    for _ in range(3):
        assert evaluation.evaluate(model, dataset, set_key="set", iters_list=[1, 3]) == first
    assert run.experimental_get_tracing_count() == traces
    del model, run
    gc.collect()
    assert len(evaluation._RUNNERS) == 0
