"""The object-state sets of generated scenes (state auto-encoder data) and their pictures."""

import json
import os

import numpy as np
import pytest

from dspn_tf import visualize
from dspn_tf.data import clevr, clevr_mini, clevr_states


def test_generated_scenes_are_the_rendered_ones():
    # Skipping the shading must not change the scene: same random stream.
    for index in (0, 3):
        rendered, image = clevr_mini.make_scene(7, "val", index)
        scene, none = clevr_mini.make_scene(7, "val", index, render=False)
        assert none is None and image.shape == (320, 480, 3)
        assert scene == rendered
    listed = clevr_mini.generate_scenes(4, split="val", seed=7, workers=2, chunk_size=2)
    assert [s["image_index"] for s in listed] == [0, 1, 2, 3]
    assert listed[3] == clevr_mini.make_scene(7, "val", 3, render=False)[0]


def test_generated_states_shapes_and_labels(tmp_path):
    states, masks = clevr_states.generated_states("train", num_scenes=6, seed=3, cache_dir=str(tmp_path))
    assert states.shape == (6, 10, 18) and states.dtype == np.float32
    assert masks.shape == (6, 10)
    scenes = clevr_mini.generate_scenes(6, split="train", seed=3, workers=1)
    for i, scene in enumerate(scenes):
        want_state, want_mask = clevr.scene_state(scene)
        np.testing.assert_array_equal(states[i], want_state)
        np.testing.assert_array_equal(masks[i], want_mask)
        assert 3 <= masks[i].sum() <= 10
    # The second call reads the cache file, with the same values.
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    again, again_mask = clevr_states.generated_states("train", num_scenes=6, seed=3, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again, states)
    np.testing.assert_array_equal(again_mask, masks)


def test_held_out_split_differs_from_train():
    train, _ = clevr_states.generated_states("train", num_scenes=50, seed=0)
    val, _ = clevr_states.generated_states("val", num_scenes=50, seed=0)
    # No held-out scene's object positions appear among the training scenes'.
    train_xy = {tuple(np.round(row[:2], 6)) for scene in train for row in scene if row.any()}
    val_xy = {tuple(np.round(row[:2], 6)) for scene in val for row in scene if row.any()}
    assert not train_xy & val_xy


def test_build_dataset_generated_and_folder(tmp_path):
    ds = clevr_states.build_dataset("generated", "val", num_scenes=5, seed=1)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == 5
    assert examples[0]["state"].shape == (10, 18) and examples[0]["mask"].shape == (10,)
    # A CLEVR_v1.0 folder: the states of its scene file (its images are not read).
    scenes = clevr_mini.generate_scenes(3, split="val", seed=1, workers=1)
    os.makedirs(tmp_path / "scenes")
    with open(tmp_path / "scenes" / "CLEVR_val_scenes.json", "w") as f:
        json.dump({"scenes": scenes}, f)
    from_folder = list(clevr_states.build_dataset(str(tmp_path), "val").as_numpy_iterator())
    assert len(from_folder) == 3
    for a, b in zip(examples, from_folder):
        np.testing.assert_array_equal(a["state"], b["state"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_scenes"):
        clevr_states.build_dataset("generated", "train")
    with pytest.raises(ValueError, match="num_scenes"):
        clevr_states.generated_states("train", num_scenes=0)
    with pytest.raises(ValueError, match="source"):
        clevr_states.build_dataset("/no/such/folder", "train")
    with pytest.raises(ValueError, match="split"):
        clevr_mini.generate_scenes(2, split="dev")


def _state(x, y, color, shape, size="large", material="rubber"):
    row = np.zeros(18, np.float32)
    row[:3] = (x / 3.0, y / 3.0, 0.7 / 3.0)
    start = 3
    for (_group, values), value in zip(clevr.ATTRIBUTES, (material, color, shape, size)):
        row[start + values.index(value)] = 1.0
        start += len(values)
    return row


def test_state_progression_draws_objects_where_they_are():
    target = np.stack([_state(-2.0, 2.0, "red", "cube"), _state(2.0, -2.0, "blue", "sphere"), np.zeros(18)])
    target_mask = np.array([1.0, 1.0, 0.0])
    faint = target.copy()
    steps = np.stack([faint, target])
    masks = np.stack([np.array([0.3, 0.3, 0.0]), target_mask])
    image = visualize.state_progression(steps, masks, target, target_mask, clevr.ATTRIBUTES, size=140)
    assert image.dtype == np.uint8 and image.shape == (140, 3 * 140 + 2 * 2, 3)
    last = image[:, -140:]
    scale = 140 / 7.0

    def pixel(panel, x, y):
        return panel[int(round((3.5 - y) * scale)), int(round((x + 3.5) * scale))].astype(int)

    red, blue = pixel(last, -2.0, 2.0), pixel(last, 2.0, -2.0)
    assert red[0] > 150 and red[1] < 60 and red[2] < 60, red
    assert blue[2] > 180 and blue[0] < 80, blue
    # The padded slot (mask 0) draws nothing: the floor at the centre.
    assert (pixel(last, 0.0, 0.0) == 236).all()
    # Opacity is the mask: the first step's red cube is paler than the target's.
    first = image[:, :140]
    assert pixel(first, -2.0, 2.0)[1] > red[1] + 80
    # Shape is the marker: a cube fills its corner, a sphere (disc) does not.
    corner = 0.7 * 0.8
    assert (pixel(last, -2.0 + corner, 2.0 + corner) != 236).any()
    assert (pixel(last, 2.0 + corner, -2.0 + corner) == 236).all()


def test_state_progression_rejects_wrong_features():
    with pytest.raises(ValueError, match="features"):
        visualize.state_progression(
            np.zeros([2, 3, 4]), np.zeros([2, 3]), np.zeros([3, 4]), np.zeros(3), clevr.ATTRIBUTES
        )
