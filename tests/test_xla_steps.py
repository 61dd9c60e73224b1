"""Hungarian-loss steps under XLA: `compile(jit_compile=True)`, the custom loop's `Trainer`, and the traced graph.

The in-graph assignment solver (`dspn_tf.assignment`) is what lets these
compile: scipy's runs as a `PyFunc` op, which XLA refuses.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf.models import build_model
from dspn_tf.training import LossSettings, Trainer

N, C, IMAGE = 5, 2, 16
HOST_CALL_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc", "NumpyFunction"}


def _examples(count=8, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, N + 1, size=count)
    mask = (np.arange(N)[None] < sizes[:, None]).astype(np.float32)
    points = rng.random((count, N, C), dtype=np.float32) * mask[..., None]
    images = rng.random((count, IMAGE, IMAGE, 3), dtype=np.float32)
    return {"set": points, "state": points, "mask": mask, "image": images}


def _model(task, decoder):
    shape = (N, C) if task == "autoencoder" else (IMAGE, IMAGE, 3)
    return build_model(
        task,
        decoder=decoder,
        set_size=N,
        set_channels=C,
        dim=8,
        latent=4,
        iters=3,
        input_shape=shape,
        image_encoder="conv",
    )


def test_issue_reproduction_fits_with_jit_compile():
    model = build_model("autoencoder", set_size=5, set_channels=2, dim=8, latent=4, iters=3, input_shape=(5, 2))
    model.compile(optimizer="sgd", loss_settings=LossSettings(loss="hungarian"), jit_compile=True)
    data = {"set": np.random.rand(8, 5, 2).astype("f4"), "mask": np.ones((8, 5), "f4")}
    history = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(4), verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize(
    "task, decoder, settings",
    [
        ("autoencoder", "dspn", LossSettings(set_key="set", loss="hungarian", all_steps=False)),
        ("autoencoder", "mlp", LossSettings(set_key="set", loss="hungarian", all_steps=True)),
        ("image", "dspn", LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1)),
        ("image", "mlp", LossSettings(set_key="state", loss="hungarian", all_steps=False)),
    ],
)
def test_xla_fit_evaluate_predict_equal_the_plain_ones(task, decoder, settings):
    examples = _examples()
    data = tf.data.Dataset.from_tensor_slices(examples).batch(4)
    model = _model(task, decoder)
    start = [w.numpy() for w in model.weights]
    results = {}
    for jit_compile in (False, True):
        model.set_weights(start)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss_settings=settings, jit_compile=jit_compile)
        fit = model.fit(data, epochs=1, verbose=0).history["loss"][0]
        weights = [w.numpy() for w in model.weights]
        evaluated = model.evaluate(data, verbose=0, return_dict=True)
        predicted = model.predict(data, verbose=0)
        results[jit_compile] = (fit, weights, evaluated, predicted)
    (fit0, w0, ev0, pred0), (fit1, w1, ev1, pred1) = results[False], results[True]
    np.testing.assert_allclose(fit1, fit0, rtol=1e-5)
    for a, b, var in zip(w1, w0, model.weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=var.path)
    for key in ev0:
        np.testing.assert_allclose(ev1[key], ev0[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for key in pred0:
        np.testing.assert_allclose(pred1[key], pred0[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_trainer_jit_step_equals_plain_step():
    settings = LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1)
    batch = {k: tf.constant(v) for k, v in _examples().items()}
    model = _model("image", "dspn")
    start = [w.numpy() for w in model.weights]
    losses = {}
    for jit_compile in (False, True):
        model.set_weights(start)
        trainer = Trainer(model, keras.optimizers.SGD(0.1), settings, global_batch_size=8, jit_compile=jit_compile)
        assert trainer.step_settings.solver == ("tf" if jit_compile else "scipy")
        losses[jit_compile] = float(trainer.train_step(batch)["train/loss"])
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)


def _op_types(graph):
    """Op types of a graph and of every function in its library."""
    types = {op.type for op in graph.get_operations()}
    for function in graph.as_graph_def().library.function:
        types.update(node.op for node in function.node_def)
    return types


@pytest.mark.parametrize("solver", ["tf", "scipy"])
def test_clevr_train_step_graph_has_no_host_call(solver):
    settings = LossSettings(set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1, solver=solver)
    batch = {k: tf.constant(v) for k, v in _examples().items()}
    model = _model("image", "dspn")
    trainer = Trainer(model, keras.optimizers.Adam(1e-3), settings, global_batch_size=8)
    graph = trainer.train_step.get_concrete_function(batch).graph
    found = _op_types(graph) & HOST_CALL_OPS
    if solver == "tf":
        assert not found, f"host calls in the train step: {found}"
    else:  # The walk does find scipy's call.
        assert found
