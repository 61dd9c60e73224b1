"""DSPN's inner loop as parts: every combination of options, parts defined outside the library,
serialisation of the parts, and the MLP-initialised starting set."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, SetAutoEncoder
from dspn_tf.inner import (
    ClipMask,
    ClipPerSample,
    InnerTransform,
    LoopState,
    MLPStart,
    Momentum,
    Objective,
    Projection,
    StartRegularizer,
    Tolerance,
    chain,
)

SET_SIZE, CHANNELS, LATENT, ITERS = 5, 2, 8, 3


def make_dspn(iters=ITERS, lr=5.0, **options):
    dspn = DSPN(FSEncoder(dim=8, latent=LATENT, n_pieces=4), SET_SIZE, CHANNELS, iters=iters, lr=lr, **options)
    dspn.build((None, LATENT))
    return dspn


def embedding(dspn, rng, batch=4):
    x = rng.random((batch, SET_SIZE, CHANNELS)).astype(np.float32)
    mask = np.ones((batch, SET_SIZE), np.float32)
    mask[:, -1] = 0.0
    return dspn.encoder(x, mask)


def forward(dspn, z, **kwargs):
    tf.random.set_seed(5)  # The same random start for every call that draws one.
    return dspn(z, training=True, **kwargs)


MOMENTA = {"none": {}, "heavy_ball": {"momentum": 0.9, "nesterov": False}, "nesterov": {"momentum": 0.9}}


def test_implicit_forward_equals_unrolled_for_every_combination(rng):
    stopped_early = 0
    for momentum, clip, tolerance, mse, random, regularizer in itertools.product(
        MOMENTA, (None, 0.05), (None, 0.02), (False, True), (False, True), (0.0, 0.1)
    ):
        options = {
            **MOMENTA[momentum],
            "clip": clip,
            "tolerance": tolerance,
            "inner_loss": "mse" if mse else "huber",
            "starting_set": "random" if random else "learned",
            "start_regularizer": regularizer,
            "seed": 3,
        }
        name = str(options)
        unrolled = make_dspn(**options)
        implicit = make_dspn(gradient="implicit", **options)
        for source, target in zip(unrolled.weights, implicit.weights):
            target.assign(source)
        z = embedding(unrolled, rng)
        a, b = forward(unrolled, z), forward(implicit, z)
        for key in ("sets", "masks", "inner_losses", "grad_norms", "steps"):
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{key} {name}")
        stopped_early += int(np.sum(a["steps"].numpy() < ITERS))
    # The tolerance runs did stop samples early, so the freeze was compared too.
    assert stopped_early > 0


@keras.saving.register_keras_serializable(package="tests")
class Sign(InnerTransform):
    """A sign-of-gradient step, defined outside the library."""

    def update(self, updates, slots):
        return tuple(tf.sign(u) for u in updates), slots


def test_an_inner_optimizer_defined_outside_the_library_runs_in_every_loop(rng):
    lr = 0.05
    dspn = make_dspn(lr=lr, optimizer=Sign())
    z = embedding(dspn, rng)
    out = dspn(z)
    # Its step: the set moves by exactly lr per entry, against the sign of the gradient.
    start_set, start_mask = out["sets"][0], out["masks"][0]
    _, set_grad, mask_grad = dspn.inner_gradient(z, start_set, start_mask, (start_set, start_mask))
    np.testing.assert_allclose(out["sets"][1].numpy(), (start_set - lr * tf.sign(set_grad)).numpy(), atol=1e-7)
    # The graph loop and the implicit forward take the same steps.
    looped = dspn(z, iters=tf.constant(ITERS))
    np.testing.assert_allclose(looped["sets"].numpy(), out["sets"].numpy(), atol=1e-6)
    implicit = make_dspn(lr=lr, optimizer=Sign(), gradient="implicit")
    for source, target in zip(dspn.weights, implicit.weights):
        target.assign(source)
    with tf.GradientTape() as tape:
        trained = implicit(z, training=True)
        loss = tf.reduce_sum(trained["sets"][-1] ** 2)
    np.testing.assert_allclose(trained["sets"].numpy(), out["sets"].numpy(), atol=1e-6)
    grads = tape.gradient(loss, implicit.encoder.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    # And a decoder using it saves and loads.
    clone = DSPN.from_config(dspn.get_config())
    assert isinstance(clone.inner_optimizer, Sign)


def test_parts_and_their_shorthands_are_the_same_decoder(rng):
    by_keywords = make_dspn(momentum=0.9, clip=10.0, inner_loss="mse", start_regularizer=0.1, tolerance=1e-3)
    by_parts = make_dspn(
        optimizer=chain(ClipPerSample(10.0), Momentum(0.9)),
        objective=Objective("mse", [StartRegularizer(0.1)]),
        stopping=Tolerance(1e-3),
        projection=ClipMask(),
    )
    # The same config: today's keywords, readable by older versions too.
    assert without_names(by_parts.get_config()) == without_names(by_keywords.get_config())
    for source, target in zip(by_keywords.weights, by_parts.weights):
        target.assign(source)
    z = embedding(by_keywords, rng)
    np.testing.assert_array_equal(by_keywords(z)["sets"].numpy(), by_parts(z)["sets"].numpy())


def without_names(config):
    config = {**config, "encoder": {**config["encoder"], "config": {**config["encoder"]["config"], "name": None}}}
    return {**config, "name": None}


def test_a_part_and_its_shorthand_together_are_refused():
    with pytest.raises(ValueError, match="either `optimizer`"):
        make_dspn(optimizer=Sign(), momentum=0.5)
    with pytest.raises(ValueError, match="either `objective`"):
        make_dspn(objective=Objective("mse"), inner_loss="mse")
    with pytest.raises(ValueError, match="either `stopping`"):
        make_dspn(stopping=Tolerance(0.1), tolerance=0.1)
    with pytest.raises(ValueError, match="`starting_set`"):
        make_dspn(starting_set="zeros")


@keras.saving.register_keras_serializable(package="tests")
class UnitBox(Projection):
    """Keeps every set entry in [0, 1] as well as the mask."""

    def __call__(self, set_, mask):
        return tf.clip_by_value(set_, 0.0, 1.0), tf.clip_by_value(mask, 0.0, 1.0)


def test_a_projection_applies_to_the_start_and_after_every_step(rng):
    dspn = make_dspn(lr=50.0, projection=UnitBox(), starting_set=MLPStart(dim=8, mask_offset=3.0))
    out = dspn(embedding(dspn, rng))
    sets, masks = out["sets"].numpy(), out["masks"].numpy()
    assert sets.min() >= 0.0 and sets.max() <= 1.0 and masks.min() >= 0.0 and masks.max() <= 1.0
    assert np.all(masks[0] == 1.0)  # The MLP start's mask (about 3) was projected too.
    clone = DSPN.from_config(dspn.get_config())
    assert isinstance(clone.projection, UnitBox) and clone.start.mask_offset == 3.0


def test_the_loop_state_is_named():
    state = LoopState(set=1, mask=2, slots=(), active=3, steps=4)
    assert tf.nest.flatten(state) == [1, 2, 3, 4]


def test_mlp_start_predicts_the_start_and_trains_through_the_loop(rng, tmp_path):
    decoder = make_dspn(starting_set="mlp")
    assert decoder.get_config()["starting_set"] == "mlp"
    model = SetAutoEncoder(decoder)
    x = rng.random((4, SET_SIZE, CHANNELS)).astype(np.float32)
    mask = np.ones((4, SET_SIZE), np.float32)
    inputs = {"set": x, "mask": mask}
    with tf.GradientTape() as tape:
        out = model(inputs, training=True)
        loss = tf.reduce_sum(out["sets"][-1] ** 2)
    head = decoder.start_network.trainable_variables
    assert len(head) == 6  # Three Dense layers.
    grads = tape.gradient(loss, head)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)
    # Each sample starts from its own prediction: the head's output on its z.
    raw = decoder.start_network(out["z"]).numpy().reshape(4, SET_SIZE, CHANNELS + 1)
    np.testing.assert_allclose(out["sets"][0].numpy(), raw[..., :-1], atol=1e-6)
    np.testing.assert_allclose(out["masks"][0].numpy(), np.clip(raw[..., -1] + 0.5, 0, 1), atol=1e-6)
    assert not np.allclose(out["sets"][0, 0].numpy(), out["sets"][0, 1].numpy())
    # Saved and loaded with its head.
    path = str(tmp_path / "mlp_start.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(inputs)["sets"].numpy(), model(inputs)["sets"].numpy(), atol=1e-6)


def test_mlp_start_with_implicit_gradients_and_no_regularizer_is_not_trained():
    decoder = make_dspn(starting_set="mlp", gradient="implicit")
    assert decoder.start_network.weights and not decoder.start_network.trainable_variables
    decoder = make_dspn(starting_set="mlp", gradient="implicit", start_regularizer=0.1)
    assert len(decoder.start_network.trainable_variables) == 6
