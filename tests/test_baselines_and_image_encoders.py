"""Baseline decoders (docs/algorithm.md §6) and image encoders (docs/algorithm.md §5)."""

import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import LSTMDecoder, MLPDecoder
from dspn_tf.image_encoders import ConvEncoder, ResNet18Encoder, ResNet34Encoder

SET_SIZE, CHANNELS, LATENT, DIM = 5, 3, 4, 8


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def dense(x, layer):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def lstm_decoder_reference(decoder, z):
    """docs/algorithm.md §6: cell state Dense(z), hidden state 0, N steps on zero inputs, Dense(C + 1) per step."""
    cell = decoder.lstm.cell
    recurrent, bias = cell.recurrent_kernel.numpy(), cell.bias.numpy()
    c = dense(z, decoder.cell_init)
    h = np.zeros_like(c)
    outputs = []
    for _ in range(decoder.set_size):
        gates = h @ recurrent + bias  # The input is zero, so the input kernel drops out.
        i, f, g, o = np.split(gates, 4, axis=-1)  # Keras gate order.
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        outputs.append(dense(h, decoder.output_layer))
    out = np.stack(outputs, axis=1)  # Shape: [B, N, C + 1].
    return out[..., :-1], out[..., -1]


@pytest.mark.parametrize("cls", [MLPDecoder, LSTMDecoder])
def test_output_structure_matches_dspn(rng, cls):
    decoder = cls(SET_SIZE, CHANNELS, DIM)
    out = decoder(rng.normal(size=(2, LATENT)).astype(np.float32))
    assert set(out) == {"sets", "masks", "inner_losses", "grad_norms"}
    assert out["sets"].shape == (1, 2, SET_SIZE, CHANNELS)
    assert out["masks"].shape == (1, 2, SET_SIZE)
    assert out["inner_losses"].shape == (0, 2) and out["grad_norms"].shape == (0, 2)
    # `iters` is accepted and ignored, so training code can pass it to any decoder.
    np.testing.assert_array_equal(decoder(tf.ones([2, LATENT]), iters=7)["sets"], decoder(tf.ones([2, LATENT]))["sets"])


def test_mlp_decoder_matches_numpy_and_mask_is_raw(rng):
    decoder = MLPDecoder(SET_SIZE, CHANNELS, DIM)
    z = rng.normal(size=(3, LATENT)).astype(np.float32)
    decoder(z)
    bias = decoder.output_layer.bias.numpy().reshape(SET_SIZE, CHANNELS + 1)
    bias[:, -1] = [-3.0, -1.0, 0.5, 2.0, 4.0]  # Mask logits well outside [0, 1].
    decoder.output_layer.bias.assign(bias.reshape(-1))
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    flat = dense(relu(dense(relu(dense(z, decoder.hidden1)), decoder.hidden2)), decoder.output_layer)
    expected = flat.reshape(3, SET_SIZE, CHANNELS + 1)
    out = decoder(z)
    np.testing.assert_allclose(out["sets"][0], expected[..., :-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["masks"][0], expected[..., -1], rtol=1e-5, atol=1e-6)
    masks = out["masks"].numpy()
    assert masks.min() < 0.0 and masks.max() > 1.0  # Not clamped, not squashed.


def test_lstm_decoder_matches_numpy(rng):
    decoder = LSTMDecoder(SET_SIZE, CHANNELS, DIM)
    z = rng.normal(size=(3, LATENT)).astype(np.float32)
    decoder(z)
    # A nonzero cell-init bias would hide which state (h or c) receives Dense(z).
    decoder.cell_init.bias.assign(rng.normal(size=DIM).astype(np.float32))
    sets, masks = lstm_decoder_reference(decoder, z.astype(np.float64))
    out = decoder(z)
    np.testing.assert_allclose(out["sets"][0], sets, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["masks"][0], masks, rtol=1e-4, atol=1e-5)


def test_lstm_decoder_depends_on_z_only_through_cell_init(rng):
    decoder = LSTMDecoder(SET_SIZE, CHANNELS, DIM)
    z = rng.normal(size=(2, LATENT)).astype(np.float32)
    out = decoder(z)["sets"].numpy()
    assert np.abs(out[0, 0] - out[0, 1]).max() > 1e-4  # Different z, different sets.
    decoder.cell_init.kernel.assign(np.zeros((LATENT, DIM), np.float32))
    out = decoder(z)["sets"].numpy()
    np.testing.assert_allclose(out[0, 0], out[0, 1], atol=1e-7)


@pytest.mark.parametrize("cls", [MLPDecoder, LSTMDecoder])
def test_baseline_gradients_reach_every_weight(rng, cls):
    decoder = cls(SET_SIZE, CHANNELS, DIM)
    z = tf.constant(rng.normal(size=(2, LATENT)), tf.float32)
    with tf.GradientTape() as tape:
        out = decoder(z, training=True)
        loss = tf.reduce_sum(out["sets"] ** 2) + tf.reduce_sum(out["masks"] ** 2)
    variables = decoder.trainable_variables
    grads = tape.gradient(loss, variables)
    assert len(grads) == (6 if cls is MLPDecoder else 7)
    for variable, grad in zip(variables, grads):
        assert grad is not None, variable.path
        if cls is LSTMDecoder and variable is decoder.lstm.cell.kernel:
            # The LSTM runs on zero inputs (docs/algorithm.md §6): its input kernel never matters.
            np.testing.assert_array_equal(grad, 0.0)
        else:
            assert np.abs(grad.numpy()).max() > 0, variable.path


@pytest.mark.parametrize("cls", [MLPDecoder, LSTMDecoder])
def test_baseline_contract_and_errors(rng, cls):
    decoder = cls(SET_SIZE, CHANNELS, DIM)
    fn = tf.function(lambda z: decoder(z)["sets"], input_signature=[tf.TensorSpec([None, LATENT], tf.float32)])
    z = rng.normal(size=(3, LATENT)).astype(np.float32)
    np.testing.assert_allclose(fn(z), decoder(z)["sets"], rtol=1e-5, atol=1e-6)
    assert fn(z[:1]).shape == (1, 1, SET_SIZE, CHANNELS)
    clone = cls.from_config(decoder.get_config())
    assert (clone.set_size, clone.set_channels, clone.dim) == (SET_SIZE, CHANNELS, DIM)
    with pytest.raises(ValueError, match=r"`z`.*\(3, 2, 4\)"):
        decoder(tf.zeros([3, 2, LATENT]))
    with pytest.raises(ValueError, match=r"size 4.*\(3, 6\)"):
        decoder(tf.zeros([3, 6]))
    for key in ("set_size", "set_channels", "dim"):
        kwargs = {"set_size": 2, "set_channels": 2, "dim": 2, key: 0}
        with pytest.raises(ValueError, match=key):
            cls(**kwargs)


@pytest.mark.parametrize("cls", [MLPDecoder, LSTMDecoder])
def test_mask_offset_shifts_only_the_raw_mask(rng, cls):
    """The paper's set-MNIST baselines add 1 to the predicted mask (appendix B.1); the sets are unchanged."""
    plain = cls(SET_SIZE, CHANNELS, DIM)
    z = rng.normal(size=(3, LATENT)).astype(np.float32)
    plain(z)
    shifted = cls.from_config({**plain.get_config(), "mask_offset": 1.0})
    shifted(z)
    shifted.set_weights(plain.get_weights())
    a, b = plain(z), shifted(z)
    np.testing.assert_array_equal(b["sets"], a["sets"])
    np.testing.assert_allclose(b["masks"], a["masks"] + 1.0, rtol=0, atol=1e-6)
    assert shifted.get_config()["mask_offset"] == 1.0 and plain.get_config()["mask_offset"] == 0.0
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(ValueError, match="mask_offset"):
            cls(SET_SIZE, CHANNELS, DIM, mask_offset=bad)


def test_baseline_mask_offset_flag_reaches_the_model():
    from train import config as config_lib

    for decoder, offset in (("mlp", 1.0), ("lstm", 1.0), ("mlp", 0.0)):
        cfg = config_lib.load(
            "configs/set_mnist_mlp.cfg",
            f"--decoder={decoder}",
            f"--baseline_mask_offset={offset}",
            "--dim=8",
            "--latent=4",
            "--decoder_dim=8",
        )
        assert config_lib.build_model(cfg).decoder.mask_offset == offset


@pytest.mark.parametrize("cls", [MLPDecoder, LSTMDecoder])
def test_baselines_build_in_float64(cls):
    decoder = cls(SET_SIZE, CHANNELS, DIM, dtype="float64")
    out = decoder(tf.zeros([2, LATENT], tf.float64))
    assert out["sets"].dtype == tf.float64
    assert {w.dtype for w in decoder.weights} == {"float64"}


# --- Image encoders -----------------------------------------------------------------------------

TORCHVISION_RESNET34_WITHOUT_FC = 21_284_672  # sum(p.numel()) of resnet34() minus fc (512 * 1000 + 1000).


def test_resnet34_shape_and_parameter_count(rng):
    latent = 16
    encoder = ResNet34Encoder(latent)
    images = rng.random((2, 128, 128, 3)).astype(np.float32)
    assert encoder(images).shape == (2, latent)
    head = (
        3 * 3 * 512 * 512
        + 512  # Conv 3×3 stride 2 (512) with bias: 4×4 → 2×2.
        + 2 * 512  # BatchNorm gamma and beta (moving statistics are not parameters in torch either).
        + 2 * 2 * 512 * latent
        + latent  # Conv 2×2 (latent) with bias: 2×2 → 1×1.
    )
    trainable = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    assert trainable == TORCHVISION_RESNET34_WITHOUT_FC + head
    # Running statistics: 2 per BatchNorm channel, not trainable.
    assert all("moving" in w.path for w in encoder.non_trainable_weights)


TORCHVISION_RESNET18_WITHOUT_FC = 11_176_512  # sum(p.numel()) of resnet18() minus fc (512 * 1000 + 1000).


def test_resnet18_shape_and_parameter_count(rng):
    latent = 16
    encoder = ResNet18Encoder(latent)
    images = rng.random((2, 128, 128, 3)).astype(np.float32)
    assert encoder(images).shape == (2, latent)
    # iDSPN's head: BatchNorm, then Conv 2×2 stride 2 with latent / 4 filters (4×4 → 2×2) and bias.
    head = 2 * 512 + 2 * 2 * 512 * (latent // 4) + latent // 4
    trainable = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    assert trainable == TORCHVISION_RESNET18_WITHOUT_FC + head
    assert ResNet18Encoder(latent)(rng.random((1, 256, 256, 3)).astype(np.float32)).shape == (1, latent)
    with pytest.raises(ValueError, match="divisible by 4"):
        ResNet18Encoder(6)(images)
    with pytest.raises(ValueError, match="multiples of 64"):
        ResNet18Encoder(8)(images[:, :100])


def test_conv_encoder_shape_and_errors(rng):
    encoder = ConvEncoder(6, filters=(4, 8))
    images = rng.random((3, 32, 32, 3)).astype(np.float32)
    assert encoder(images).shape == (3, 6)
    assert encoder(images, training=True).shape == (3, 6)
    fn = tf.function(encoder, input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    np.testing.assert_allclose(fn(images[:1]), encoder(images[:1]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        encoder(images[0])
    with pytest.raises(ValueError, match="latent"):
        ConvEncoder(0)
    with pytest.raises(ValueError, match="latent"):
        ResNet34Encoder(-1)


# The paper's parameter counts (ours 140 000, MLP 530 000, LSTM 470 000) are those of latent 256. The
# LSTM is 1,024 below PyTorch's 469,763: Keras' LSTM has one bias vector where PyTorch's has two.
@pytest.mark.parametrize("decoder, count", [("dspn", 139_010), ("mlp", 533_250), ("lstm", 468_739)])
def test_latent_256_configs_have_the_paper_parameter_counts(decoder, count):
    from train import config as config_lib

    cfg = config_lib.load(f"configs/set_mnist_{decoder}_latent256.cfg")
    assert cfg.model.latent == 256
    assert cfg.model.baseline_mask_offset == (0.0 if decoder == "dspn" else 1.0)
    assert config_lib.build_model(cfg).count_params() == count
