"""The exported SavedModel under bad requests (issue 13, item 6).

Each bad request must give a defined output or an error (InvalidArgument, or
TypeError / ValueError where the signature refuses a dtype before running),
leave the other rows of its batch as without it, and leave the loaded model
serving: every failure is followed by a good request checked against the
reference outputs.
"""

import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, export
from dspn_tf.models import SetAutoEncoder

N, C, LATENT, TRAINED_ITERS, MAX_ITERS = 6, 2, 8, 4, 12
REJECTED = (TypeError, ValueError, tf.errors.InvalidArgumentError)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = SetAutoEncoder(DSPN(FSEncoder(dim=16, latent=LATENT), set_size=N, set_channels=C, iters=TRAINED_ITERS))
    model({"set": tf.zeros([1, N, C]), "mask": tf.ones([1, N])})
    base = str(tmp_path_factory.mktemp("export"))
    version = export.export_model(model, base, all_steps=True, save_keras=False, max_iters=MAX_ITERS)
    return model, tf.saved_model.load(version)


def _inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    mask = (rng.random((batch, N)) < 0.8).astype(np.float32)
    return rng.random((batch, N, C), dtype=np.float32) * mask[..., None], mask


class Server:
    """Calls the loaded signatures, counts bad requests and checks that serving continues after each."""

    def __init__(self, loaded):
        self.signatures = loaded.signatures
        self.good_set, self.good_mask = _inputs(4, seed=1)
        self.reference = self.serve(self.good_set, self.good_mask, 3)
        self.bad_requests = 0

    def serve(self, set_, mask, iters, name="serving_default"):
        out = self.signatures[name](set=set_, mask=mask, iters=tf.constant(iters) if isinstance(iters, int) else iters)
        return {k: v.numpy() for k, v in out.items()}

    def still_serving(self):
        again = self.serve(self.good_set, self.good_mask, 3)
        for key, value in self.reference.items():
            np.testing.assert_array_equal(again[key], value, err_msg=key)

    def rejects(self, call, match=None):
        self.bad_requests += 1
        with pytest.raises(REJECTED, match=match):
            call()
        self.still_serving()

    def answers(self, call):
        self.bad_requests += 1
        out = call()
        self.still_serving()
        return out


@pytest.fixture(scope="module")
def server(served):
    return Server(served[1])


def _rows_equal(out, reference, rows):
    for key in out:
        np.testing.assert_allclose(out[key][rows], reference[key][rows], rtol=1e-6, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["set", "mask"])
def test_non_finite_values_give_a_nan_row_and_leave_the_others(server, value, where):
    set_, mask = _inputs(4)
    clean = server.serve(set_, mask, 3)
    if where == "set":
        set_ = set_.copy()
        set_[2, 1, 0] = value
    else:
        mask = mask.copy()
        mask[2, 3] = value
    out = server.answers(lambda: server.serve(set_, mask, 3))
    assert all(np.isnan(v[2]).all() for v in out.values())
    _rows_equal(out, clean, [0, 1, 3])


@pytest.mark.parametrize("value", [1e30, -1e30, 3e38])
def test_huge_finite_values_decode_to_finite_rows(server, value):
    set_, mask = _inputs(4)
    clean = server.serve(set_, mask, 3)
    set_ = set_.copy()
    set_[1] = value
    out = server.answers(lambda: server.serve(set_, mask, 3))
    # A row is all finite or all NaN (an overflow would be a NaN row); these decode finitely.
    assert all(np.isfinite(v[1]).all() for v in out.values())
    _rows_equal(out, clean, [0, 2, 3])


def test_huge_z_in_decode(server):
    z = np.random.default_rng(0).normal(size=(3, LATENT)).astype(np.float32)
    clean = server.signatures["decode"](z=z, iters=tf.constant(3))
    z[1] = 1e30
    out = server.answers(lambda: server.signatures["decode"](z=z, iters=tf.constant(3)))
    for key in ("set", "mask"):
        row = out[key].numpy()[1]
        assert np.isfinite(row).all() or np.isnan(row).all(), key
        np.testing.assert_allclose(out[key].numpy()[[0, 2]], clean[key].numpy()[[0, 2]], rtol=1e-6, atol=1e-6)


def test_empty_and_large_batches(server):
    empty = server.answers(lambda: server.serve(np.zeros((0, N, C), np.float32), np.zeros((0, N), np.float32), 3))
    assert empty["set"].shape == (0, N, C) and empty["mask"].shape == (0, N)
    steps = server.answers(
        lambda: server.serve(np.zeros((0, N, C), np.float32), np.zeros((0, N), np.float32), 3, "serving_all_steps")
    )
    assert steps["sets"].shape == (0, 4, N, C) and steps["inner_losses"].shape == (0, 3)
    set_, mask = _inputs(1024, seed=3)
    big = server.answers(lambda: server.serve(set_, mask, 3))
    assert big["set"].shape == (1024, N, C) and np.isfinite(big["set"]).all()
    # A sample decodes the same alone as in a batch of 1024.
    for i in (0, 511, 1023):
        alone = server.serve(set_[i : i + 1], mask[i : i + 1], 3)
        np.testing.assert_allclose(big["set"][i], alone["set"][0], rtol=1e-5, atol=1e-5)


def test_wrong_dtype_rank_and_size_are_rejected(server):
    set_, mask = _inputs(2)
    bad = [
        (tf.constant(set_, tf.float64), mask),
        (tf.constant(set_.astype(np.int32)), mask),
        (set_, tf.constant(mask, tf.float16)),
        (tf.constant([["a"] * C] * N), mask),
        (set_[..., 0], mask),  # Rank 2.
        (set_[None], mask),  # Rank 4.
        (set_, mask[..., None]),
        (np.zeros((2, N + 1, C), np.float32), np.ones((2, N + 1), np.float32)),  # Set size.
        (np.zeros((2, N, C + 1), np.float32), mask),  # Features.
        (set_, np.ones((3, N), np.float32)),  # Batch sizes disagree.
    ]
    for set_bad, mask_bad in bad:
        server.rejects(lambda s=set_bad, m=mask_bad: server.serve(s, m, 3))
    server.rejects(lambda: server.signatures["decode"](z=np.zeros((2, LATENT + 1), np.float32), iters=tf.constant(3)))
    server.rejects(lambda: server.signatures["encode"](set=set_, mask=np.ones((2, N - 1), np.float32)))


@pytest.mark.parametrize("iters", [-1, -(2**31), MAX_ITERS + 1, 2**31 - 1])
def test_iters_out_of_range_is_invalid_argument(server, iters):
    set_, mask = _inputs(2)
    for name in ("serving_default", "serving_all_steps"):
        server.bad_requests += 1
        with pytest.raises(tf.errors.InvalidArgumentError, match="iters"):
            server.serve(set_, mask, iters, name)
        server.still_serving()
    server.bad_requests += 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="iters"):
        server.signatures["decode"](z=np.zeros((2, LATENT), np.float32), iters=tf.constant(iters))
    server.still_serving()


def test_iters_of_wrong_type_or_rank_is_rejected(server):
    set_, mask = _inputs(2)
    for iters in (tf.constant(3.0), tf.constant([3, 4]), tf.constant(3, tf.int64)):
        server.rejects(lambda i=iters: server.serve(set_, mask, i))


def test_iters_zero_returns_the_starting_set(served, server):
    model = served[0]
    set_, mask = _inputs(3)
    out = server.answers(lambda: server.serve(set_, mask, 0))
    start = np.broadcast_to(model.decoder.starting_set.numpy(), (3, N, C))
    np.testing.assert_array_equal(out["set"], start)
    np.testing.assert_array_equal(out["mask"], np.broadcast_to(model.decoder.starting_mask.numpy(), (3, N)))
    steps = server.answers(lambda: server.serve(set_, mask, 0, "serving_all_steps"))
    assert steps["sets"].shape == (3, 1, N, C) and steps["inner_losses"].shape == (3, 0)
    np.testing.assert_array_equal(steps["sets"][:, 0], start)
    # Step 0 of a longer run is the same starting set; iters = 1 moves it.
    longer = server.serve(set_, mask, 2, "serving_all_steps")
    np.testing.assert_array_equal(longer["sets"][:, 0], start)
    assert not np.array_equal(server.serve(set_, mask, 1)["set"], start)
    decoded = server.answers(
        lambda: served[1].signatures["decode"](z=np.zeros((2, LATENT), np.float32), iters=tf.constant(0))
    )
    np.testing.assert_array_equal(decoded["set"].numpy(), start[:2])


def test_max_iters_is_served(server):
    set_, mask = _inputs(2)
    out = server.serve(set_, mask, MAX_ITERS, "serving_all_steps")
    assert out["sets"].shape == (2, MAX_ITERS + 1, N, C)
