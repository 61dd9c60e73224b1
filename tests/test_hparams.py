"""HParams: two real runs of the training entry point, read back by TensorBoard's own HParams plugin.

The runs (DSPN and its MLP baseline, a few steps each) write into one logdir as a
user would (`runs/dspn`, `runs/mlp`); the plugin's `/experiment` and
`/session_groups` handlers, over TensorBoard's event multiplexer, must list both runs
with their settings and their final metrics, equal to the runs' `eval_results.json`.
"""

import json
import os

import pytest
from tensorboard import context as tb_context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

from tests.test_train import ROOT, run
from train import config as config_lib
from train import hparams

TINY = [
    "--dim=16",
    "--latent=16",
    "--decoder_dim=16",
    "--iters=2",
    "--batch_size=8",
    "--eval_iters=1,2",
    "--generated_train=16",
    "--generated_val=8",
    "--train_steps=2",
    "--noprogress",
]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hparams")
    for decoder in ("dspn", "mlp"):
        config = os.path.join(ROOT, f"configs/clevr_mini_state_autoencoder_{decoder}.cfg")
        run([f"--flagfile={config}", *TINY, f"--cache_dir={root / 'cache'}", f"--model_dir={root / 'runs' / decoder}"])
    return str(root / "runs")


def _plugin_view(logdir):
    """What the HParams dashboard receives: the experiment and every session group, from TensorBoard's reader."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    context = backend_context.Context(base_plugin.TBContext(logdir=logdir, data_provider=provider))
    ctx = tb_context.RequestContext()
    experiment = get_experiment.Handler(ctx, context, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=10,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_RUNNING],
        col_params=[api_pb2.ColParams(hparam=h.name) for h in experiment.hparam_infos]
        + [api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos],
    )
    groups = list_session_groups.Handler(ctx, context, "", request).run()
    return experiment, groups


def test_runs_show_their_settings_and_final_metrics_on_the_dashboard(logdir):
    experiment, groups = _plugin_view(logdir)
    names = {h.name for h in experiment.hparam_infos}
    assert {"decoder", "iters", "inner_gradient", "dim", "learning_rate", "loss", "loss_all_steps"} <= names
    assert not names & {"model_dir", "cache_dir", "log_every", "flags_text"}  # Paths and cadences are not settings.
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    # Only the results: the training curves under train/ and eval/ are other runs, not the session's.
    assert metrics == {("", "results/train_loss")} | {
        ("", f"results/{name}/iters_{iters}")
        for iters in (1, 2)
        for name in ("ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125")
    }

    by_run = {}
    for group in groups.session_groups:
        (session,) = group.sessions
        by_run[session.name] = (group, session)
    assert set(by_run) == {os.path.join("dspn", hparams.RUN), os.path.join("mlp", hparams.RUN)}
    for decoder in ("dspn", "mlp"):
        group, session = by_run[os.path.join(decoder, hparams.RUN)]
        assert group.hparams["decoder"].string_value == decoder
        assert group.hparams["total_steps"].number_value == 2
        assert group.hparams["loss"].string_value == "hungarian"
        expected = json.load(open(os.path.join(logdir, decoder, "eval_results.json")))["results"]
        values = {m.name.tag: m.value for m in session.metric_values}
        # The MLP has one decoder step, so it is evaluated (and has results) at 1 only.
        assert set(expected) == ({"1", "2"} if decoder == "dspn" else {"1"})
        assert len(values) == 1 + 5 * len(expected)
        for iters, row in expected.items():
            for name, value in row.items():
                if name != "num_examples":
                    assert values[f"results/{name}/iters_{iters}"] == pytest.approx(value, rel=1e-6), (decoder, name)
        assert values["results/train_loss"] > 0
        assert all(m.training_step == 2 for m in session.metric_values)


def test_settings_are_plain_values_of_the_config():
    config = config_lib.load(
        os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_idspn.cfg"), "--iters_schedule=0:2,50%:4"
    )
    settings = hparams.settings_of(config, config_lib.loss_settings(config), total_steps=100, train_examples=64)
    assert all(isinstance(v, (bool, int, float, str)) for v in settings.values())
    assert settings["inner_gradient"] == "implicit" and settings["inner_nesterov"] is True
    assert settings["iters_schedule"] == "0:2,50%:4"
    assert settings["loss_all_steps"] is False and settings["total_steps"] == 100
