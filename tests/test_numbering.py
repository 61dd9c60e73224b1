"""Class-specific numbering (iDSPN §4.1): the data, the simplex projection, the loss, the metrics and the models."""

import itertools

import keras
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf

import dspn_tf
from dspn_tf import losses, metrics, training
from dspn_tf.data import numbering
from dspn_tf.export import ServingModule
from dspn_tf.inner import SimplexProjection, projections

# --- Data --------------------------------------------------------------------------------------------


def _numbers_by_counting(labels):
    """Each element's number within its class, counted element by element."""
    numbers = np.empty_like(labels)
    for s, row in enumerate(labels):
        seen = {}
        for i, label in enumerate(row):
            numbers[s, i] = seen.get(label, 0)
            seen[label] = numbers[s, i] + 1
    return numbers


@pytest.mark.parametrize("positions, classes, per_set", [(64, 4, 4), (16, 8, 4), (5, 3, 1)])
def test_the_numbers_are_the_counts_within_each_class(positions, classes, per_set):
    labels, numbers = numbering.generate(200, positions, classes, per_set, seed=3)
    assert labels.shape == numbers.shape == (200, positions)
    np.testing.assert_array_equal(numbers, _numbers_by_counting(labels))
    for row, nums in zip(labels, numbers):
        present = np.unique(row)
        assert len(present) <= per_set and present.min() >= 0 and present.max() < classes
        for c in present:  # A class of k elements is numbered 0 .. k-1.
            np.testing.assert_array_equal(np.sort(nums[row == c]), np.arange(np.sum(row == c)))


def test_every_position_draws_its_class_among_the_chosen_ones():
    labels, _ = numbering.generate(4000, 64, 8, 4, seed=0)
    distinct = np.array([len(np.unique(row)) for row in labels])
    assert distinct.max() == 4 and np.mean(distinct == 4) > 0.99  # 64 draws among 4 classes miss one rarely.
    assert np.allclose(np.bincount(labels.ravel(), minlength=8) / labels.size, 1 / 8, atol=0.01)


def test_the_dataset_is_seeded_one_hot_and_its_splits_differ():
    def arrays(split, seed):
        ds = numbering.build_dataset(split, num_sets=10, positions=6, classes=3, classes_per_set=2, seed=seed)
        return {k: np.stack([e[k].numpy() for e in ds]) for k in ("classes", "numbers", "mask")}

    train, again, held_out = arrays("train", 1), arrays("train", 1), arrays("eval", 1)
    assert train["classes"].shape == (10, 6, 3) and train["numbers"].shape == (10, 6, 6)
    for key in train:
        np.testing.assert_array_equal(train[key], again[key])
    assert not np.array_equal(train["classes"], held_out["classes"])
    np.testing.assert_array_equal(train["mask"], 1.0)
    np.testing.assert_array_equal(train["classes"].sum(-1), 1.0)
    labels = train["classes"].argmax(-1)
    np.testing.assert_array_equal(train["numbers"].argmax(-1), _numbers_by_counting(labels))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"positions": 0}, "`positions` must be an integer >= 1"),
        ({"classes": 2, "classes_per_set": 3}, "cannot exceed `classes`"),
        ({"num_sets": 0}, "`num_sets` must be an integer >= 1"),
    ],
)
def test_bad_sizes_are_named(kwargs, match):
    args = {"num_sets": 4, "positions": 8, "classes": 4, "classes_per_set": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        numbering.build_dataset("train", **args)


# --- The simplex projection ---------------------------------------------------------------------------


def _simplex_by_bisection(x):
    """The projection as max(x - theta, 0) with sum 1, theta found by bisection (not by sorting)."""
    out = np.empty_like(x)
    for index in np.ndindex(x.shape[:-1]):
        v = x[index]
        low, high = v.min() - 1.0, v.max()
        for _ in range(200):
            theta = 0.5 * (low + high)
            low, high = (theta, high) if np.maximum(v - theta, 0).sum() > 1 else (low, theta)
        out[index] = np.maximum(v - 0.5 * (low + high), 0)
    return out


def test_the_projection_matches_a_reference_and_is_a_distribution(rng):
    x = rng.normal(size=(4, 7, 9)) * 3
    x[0, 0] = 0.0  # Ties.
    x[0, 1] = [5, 5, 5, -1, -1, -1, 0, 0, 0]
    projected = projections.project_simplex(tf.constant(x)).numpy()
    np.testing.assert_allclose(projected, _simplex_by_bisection(x), atol=1e-9)
    assert projected.min() >= 0
    np.testing.assert_allclose(projected.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(projections.project_simplex(tf.constant(projected)).numpy(), projected, atol=1e-12)


def test_the_projection_is_the_nearest_point_of_the_simplex(rng):
    x = rng.normal(size=(50, 6)) * 2
    projected = projections.project_simplex(tf.constant(x)).numpy()
    others = rng.dirichlet(np.ones(6) * 0.5, size=(50, 2000))  # Random points of the simplex.
    nearest = np.linalg.norm(x - projected, axis=-1)
    assert np.all(np.linalg.norm(x[:, None] - others, axis=-1).min(axis=1) >= nearest - 1e-12)


def test_the_projection_gradient_is_the_centred_identity_on_the_support():
    x = tf.constant([[0.9, 0.6, -2.0, 0.1]], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = projections.project_simplex(x)
    jacobian = tape.jacobian(y, x)[0, :, 0, :].numpy()
    support = y.numpy()[0] > 0
    expected = np.where(support[:, None] & support[None], np.eye(4) - 1.0 / support.sum(), 0.0)
    np.testing.assert_allclose(jacobian, expected, atol=1e-12)


def test_the_projection_part_sets_the_mask_and_round_trips():
    full = SimplexProjection()
    set_, mask = full(tf.constant([[[2.0, 0.0], [0.3, 0.3]]]), tf.constant([[0.2, 1.7]]))
    np.testing.assert_allclose(set_.numpy(), [[[1.0, 0.0], [0.5, 0.5]]])
    np.testing.assert_array_equal(mask.numpy(), [[1.0, 1.0]])
    _, clipped = SimplexProjection(mask="clip")(tf.zeros([1, 2, 2]), tf.constant([[-0.5, 1.7]]))
    np.testing.assert_array_equal(clipped.numpy(), [[0.0, 1.0]])
    assert isinstance(projections.get("simplex"), SimplexProjection)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(SimplexProjection("clip")))
    assert isinstance(restored, SimplexProjection) and restored.mask == "clip"
    with pytest.raises(ValueError, match="`mask` must be one of"):
        SimplexProjection(mask="soft")


# --- The loss and the metrics -------------------------------------------------------------------------


def _random_numbering_batch(rng, batch=6, n=8, classes=3):
    labels = rng.integers(0, classes, size=(batch, n))
    one_hot = np.eye(classes)[labels]
    pred = rng.dirichlet(np.ones(n), size=(batch, n))
    target = np.eye(n)[_numbers_by_counting(labels)]
    return pred, target, one_hot, labels


def test_a_cross_class_match_is_never_chosen(rng):
    pred, target, one_hot, labels = _random_numbering_batch(rng)
    cost = losses.numbering_cost(tf.constant(pred), tf.constant(target), tf.constant(one_hot)).numpy()
    for solver in ("tf", "scipy"):
        cols = losses.hungarian_assignment(tf.constant(cost), solver=solver).numpy()
        assert np.all(np.take_along_axis(labels, cols, axis=1) == labels)  # Target s and output cols[s] agree.
        for b in range(len(cost)):
            rows, best = scipy.optimize.linear_sum_assignment(cost[b])
            np.testing.assert_allclose(cost[b, np.arange(8), cols[b]].sum(), cost[b, rows, best].sum(), rtol=1e-9)
    # Without the penalty the optimal matching pairs some targets with outputs of another class.
    free = losses.numbering_cost(tf.constant(pred), tf.constant(target), tf.constant(one_hot), penalty=0.0).numpy()
    free_cols = np.array([scipy.optimize.linear_sum_assignment(c)[1] for c in free])
    assert np.any(np.take_along_axis(labels, free_cols, axis=1) != labels)


def test_the_loss_is_the_mean_matched_distance_within_classes(rng):
    pred, target, one_hot, labels = _random_numbering_batch(rng, n=6)
    loss = losses.numbering_loss(tf.constant(pred), tf.constant(target), tf.constant(one_hot), reduction="none")
    expected = []
    for b in range(len(pred)):
        total = 0.0  # Brute force within each class: the best permutation of its elements.
        for c in np.unique(labels[b]):
            idx = np.flatnonzero(labels[b] == c)
            best = min(
                np.linalg.norm(target[b, idx] - pred[b, list(p)], axis=-1).sum() for p in itertools.permutations(idx)
            )
            total += best
        expected.append(total / 6)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


def test_the_accuracies_count_whole_sets_and_elements():
    classes = np.eye(2)[[[0, 0, 1, 1]]]
    target = np.eye(4)[[[0, 1, 0, 1]]]
    swapped = np.eye(4)[[[1, 0, 1, 0]]]  # Equal elements swapped: still right after matching.
    whole, per_element = metrics.numbering_accuracy(swapped, target, classes)
    assert whole.tolist() == [1.0] and per_element.tolist() == [1.0]
    twice = np.eye(4)[[[0, 0, 1, 0]]]  # Two elements of class 0 both numbered 0.
    whole, per_element = metrics.numbering_accuracy(twice, target, classes)
    assert whole.tolist() == [0.0] and per_element.tolist() == [0.75]


# --- The models ---------------------------------------------------------------------------------------


def test_deepsets_is_permutation_equivariant_so_equal_elements_get_equal_outputs(rng):
    layer = dspn_tf.DeepSets(set_size=6, set_channels=6, dim=16)
    x = tf.constant(rng.normal(size=(3, 6, 4)), tf.float32)
    out = layer(x, tf.ones([3, 6]))["sets"][-1].numpy()
    perm = rng.permutation(6)
    permuted = layer(tf.gather(x, perm, axis=1), tf.ones([3, 6]))["sets"][-1].numpy()
    np.testing.assert_allclose(permuted, out[:, perm], atol=1e-6)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-6)
    equal = layer(tf.constant(np.eye(4)[[[0, 0, 1, 2, 2, 2]]], tf.float32), tf.ones([1, 6]))["sets"][-1].numpy()
    np.testing.assert_allclose(equal[0, 0], equal[0, 1], atol=1e-7)


@pytest.mark.parametrize("decoder, gradient", [("dspn", "unrolled"), ("dspn", "implicit"), ("deepsets", None)])
def test_the_set_to_set_model_trains_a_step_and_round_trips(decoder, gradient, tmp_path):
    inner = {"iters": 3, "lr": 1.0, "inner_loss": "mse", "starting_set": "random"}
    if gradient == "implicit":
        inner.update(gradient="implicit", momentum=0.9, clip=40.0)
    model = dspn_tf.build_model(
        "set_to_set",
        decoder=decoder,
        set_size=6,
        set_channels=6,
        dim=16,
        latent=8,
        input_shape=(6, 3),
        inner=inner,
        projection="simplex",
        input_key="classes",
    )
    ds = numbering.build_dataset("train", num_sets=8, positions=6, classes=3, classes_per_set=3, seed=0)
    batch = next(iter(ds.batch(8)))
    out = model(model.inputs_of(batch), training=False)
    final = out["sets"][-1].numpy()
    assert final.shape == (8, 6, 6) and final.min() >= 0
    np.testing.assert_allclose(final.sum(-1), 1.0, atol=1e-5)
    assert model.iterative == (decoder == "dspn") and out["sets"].shape[0] == (4 if decoder == "dspn" else 1)
    settings = training.LossSettings(set_key="numbers", loss="numbering", all_steps=False)
    optimizer = keras.optimizers.Adam(1e-3)
    _, losses_, grads = training.loss_and_gradients(model, optimizer, batch, settings, global_batch_size=8)
    assert np.isfinite(losses_["loss"].numpy()).all()
    assert all(g is not None for g in grads)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.decoder) is type(model.decoder)
    again = restored(restored.inputs_of(batch), training=False)["sets"][-1].numpy()
    np.testing.assert_allclose(again, final, atol=1e-6)
    with pytest.raises(ValueError, match="must be a SetAutoEncoder or ImageToSet"):
        ServingModule(model)  # Its decoder needs the input set, which decode(z) cannot give.


def test_a_dspn_set_to_set_model_needs_an_input_encoder_and_a_condition():
    decoder = dspn_tf.ConditionalDSPN(dspn_tf.FSEncoder(8, 8), 4, 4, condition_channels=2)
    with pytest.raises(ValueError, match="needs `input_encoder`"):
        dspn_tf.SetToSet(decoder)
    with pytest.raises(ValueError, match="`condition`"):
        decoder(tf.zeros([1, 8]))
    with pytest.raises(ValueError, match=r"must be \[batch, 4, 2\]"):
        decoder(tf.zeros([1, 8]), condition=tf.zeros([1, 4, 3]))
