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
