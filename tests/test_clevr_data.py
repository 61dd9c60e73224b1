"""CLEVR labels by hand, and the reader on small CLEVR-layout fixtures."""

import copy
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dspn_tf.data import clevr, image_cache

# directions.right = (cos, sin, 0) with cos = 0.6, sin = 0.8: round numbers.
DIRECTIONS = {"right": [0.6, 0.8, 0.0], "behind": [-0.8, 0.6, 0.0]}

SPHERE = {
    "shape": "sphere",
    "size": "small",
    "material": "rubber",
    "color": "cyan",
    "3d_coords": [1.5, -3.0, 0.35],
    "pixel_coords": [240, 160, 10.0],
    "rotation": 10.0,
}
CUBE = {
    "shape": "cube",
    "size": "large",
    "material": "metal",
    "color": "red",
    "3d_coords": [0.0, 2.0, 0.7],
    "pixel_coords": [300, 100, 12.0],
    "rotation": 20.0,
}
CYLINDER = {
    "shape": "cylinder",
    "size": "large",
    "material": "rubber",
    "color": "brown",
    "3d_coords": [-2.0, 1.0, 0.7],
    "pixel_coords": [120, 200, 9.0],
    "rotation": 30.0,
}


def _hand_boxes():
    """docs/algorithm.md §8 worked through by hand for the three objects above."""
    # Sphere: x1' = 1.5*0.6 + (-3)*0.8 = -1.5; y1' = -1.5*(-0.8) + (-3)*0.6 = -0.6.
    h = 6.9 * 0.35 * (15 + 0.6) / 2  # = 18.837, all four extents equal.
    sphere = [(240 - h) / 480, (160 - h) / 320, (240 + h) / 480, (160 + h) / 320]
    # Cube: x1' = 0*0.6 + 2*0.8 = 1.6; y1' = 1.6*(-0.8) + 2*0.6 = -0.08.
    h = 6.9 * 0.7 * (15 + 0.08) / 2  # = 36.4182
    h = h * 1.3 * 10 / (10 - 0.08)  # = 47.7253..., again all four extents.
    cube = [(300 - h) / 480, (100 - h) / 320, (300 + h) / 480, (100 + h) / 320]
    # Cylinder: x1' = -2*0.6 + 1*0.8 = -0.4; y1' = -0.4*(-0.8) + 1*0.6 = 0.92
    # (the quirk: a correct rotation would give 2*0.8 + 1*0.6 = 2.2).
    h0 = 6.9 * 0.7 * (15 - 0.92) / 2  # = 34.0032
    d, s = 9.4 + 0.92, 0.7  # h = 6.4
    h_u = h0 * (s * (6.4 / d + 1)) / ((s * (6.4 / d + 1)) - (s * (6.4 - s) / d))
    h_d = h_u * (6.4 - s + d) / (6.4 + s + d)
    w = h0 * 11 / (10 + 0.92)
    cylinder = [(120 - w) / 480, (200 - h_d) / 320, (120 + w) / 480, (200 + h_u) / 320]
    return np.array([sphere, cube, cylinder])


# 3d_coords / 3, material [rubber, metal], color [cyan, blue, yellow, purple,
# red, green, gray, brown], shape [sphere, cube, cylinder], size [large, small].
HAND_STATES = np.array(
    [
        [0.5, -1.0, 0.35 / 3, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [0.0, 2 / 3, 0.7 / 3, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0],
        [-2 / 3, 1 / 3, 0.7 / 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 0],
    ]
)


def test_object_state_and_box_by_hand():
    for obj, state, box in zip((SPHERE, CUBE, CYLINDER), HAND_STATES, _hand_boxes()):
        np.testing.assert_allclose(clevr.object_state(obj), state, atol=1e-6)
        np.testing.assert_allclose(clevr.object_box(obj, DIRECTIONS), box, atol=1e-6)
        # The bare right vector works as well as the directions dict.
        np.testing.assert_allclose(clevr.object_box(obj, (0.6, 0.8, 0)), box, atol=1e-6)
    # Sanity of the hand numbers themselves.
    np.testing.assert_allclose(_hand_boxes()[0, 0], (240 - 18.837) / 480)


def test_scene_state_and_boxes_pad_in_scene_order():
    scene = {"image_filename": "x.png", "directions": DIRECTIONS, "objects": [CUBE, SPHERE, CYLINDER]}
    state, mask = clevr.scene_state(scene)
    boxes, box_mask = clevr.scene_boxes(scene)
    assert state.shape == (10, 18) and boxes.shape == (10, 4)
    np.testing.assert_allclose(state[:3], HAND_STATES[[1, 0, 2]], atol=1e-6)
    np.testing.assert_allclose(boxes[:3], _hand_boxes()[[1, 0, 2]], atol=1e-6)
    np.testing.assert_array_equal(state[3:], 0)
    np.testing.assert_array_equal(boxes[3:], 0)
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(box_mask, mask)


# --------------------------------------------------------------------------
# A CLEVR-layout folder.

N_SCENES = 5


def _scene(k):
    objects = [copy.deepcopy(o) for o in (SPHERE, CUBE, CYLINDER)][: 1 + k % 3]
    return {
        "image_index": k,
        "image_filename": f"CLEVR_train_{k:06d}.png",
        "split": "train",
        "directions": DIRECTIONS,
        "objects": objects,
    }


def _write_png(path, value, size=(32, 48)):
    # RGBA with a half-transparent alpha that must be dropped, not blended.
    image = np.zeros(size + (4,), np.uint8)
    image[..., 0] = value
    image[..., 1] = 255 - value
    image[..., 2] = 7
    image[..., 3] = 128
    tf.io.write_file(path, tf.io.encode_png(image))


def _write_scenes(root, scenes):
    with open(os.path.join(root, "scenes", "CLEVR_train_scenes.json"), "w") as f:
        json.dump({"info": {"split": "train"}, "scenes": scenes}, f)


def _make_folder(tmp_path, scenes=None):
    root = tmp_path / "CLEVR_v1.0"
    (root / "scenes").mkdir(parents=True)
    (root / "images" / "train").mkdir(parents=True)
    scenes = [_scene(k) for k in range(N_SCENES)] if scenes is None else scenes
    for k, scene in enumerate(scenes):
        _write_png(str(root / "images" / "train" / scene["image_filename"]), 40 * k)
    _write_scenes(str(root), scenes)
    return str(root)


def _read(root, tmp_path, **kwargs):
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return list(clevr.build_dataset(root, "train", **kwargs).as_numpy_iterator())


@pytest.mark.parametrize("use_cache", [True, False])
def test_folder_shapes_ranges_masks_order(tmp_path, use_cache):
    root = _make_folder(tmp_path)
    examples = _read(root, tmp_path, use_cache=use_cache)
    assert len(examples) == N_SCENES
    for k, e in enumerate(examples):
        assert e["image"].shape == (128, 128, 3) and e["image"].dtype == np.float32
        assert e["state"].shape == (10, 18) and e["boxes"].shape == (10, 4)
        assert e["mask"].shape == (10,)
        assert 0.0 <= e["image"].min() and e["image"].max() <= 1.0
        # Scene-file order: image k is filled with red 40 * k, alpha dropped.
        np.testing.assert_allclose(e["image"][..., 0], 40 * k / 255, atol=1e-6)
        np.testing.assert_allclose(e["image"][..., 1], (255 - 40 * k) / 255, atol=1e-6)
        np.testing.assert_allclose(e["image"][..., 2], 7 / 255, atol=1e-6)
        n = 1 + k % 3
        np.testing.assert_array_equal(e["mask"], [1] * n + [0] * (10 - n))
        np.testing.assert_allclose(e["state"][:n], HAND_STATES[:n], atol=1e-6)
        np.testing.assert_allclose(e["boxes"][:n], _hand_boxes()[:n], atol=1e-6)


def test_cache_reuse_and_invalidation(tmp_path, monkeypatch):
    root = _make_folder(tmp_path)
    cache = tmp_path / "cache"
    writes = []
    real_write = image_cache.write
    monkeypatch.setattr(image_cache, "write", lambda *a, **k: writes.append(a[0]) or real_write(*a, **k))

    _read(root, tmp_path, image_size=16)
    _read(root, tmp_path, image_size=16)
    assert len(writes) == 1  # Reused on the second run.
    assert len(os.listdir(cache)) == 1

    _read(root, tmp_path, image_size=8)  # Another size: another entry.
    assert len(writes) == 2 and len(os.listdir(cache)) == 2

    # A changed image is seen, and its stale entry is pruned.
    image = os.path.join(root, "images", "train", "CLEVR_train_000002.png")
    _write_png(image, 250)
    os.utime(image, ns=(1, 1))
    examples = _read(root, tmp_path, image_size=16)
    assert len(writes) == 3 and len(os.listdir(cache)) == 2
    np.testing.assert_allclose(examples[2]["image"][..., 0], 250 / 255, atol=1e-6)

    # A changed scene file (here one scene fewer) invalidates too.
    _write_scenes(root, [_scene(k) for k in range(N_SCENES - 1)])
    assert len(_read(root, tmp_path, image_size=16)) == N_SCENES - 1
    assert len(writes) == 4


def test_killed_cache_write_is_not_used(tmp_path, monkeypatch):
    root = _make_folder(tmp_path)
    cache = tmp_path / "cache"

    class Killed(BaseException):
        pass

    class DyingWriter:
        def __init__(self, path):
            self.path = path
            open(path, "wb").close()

        def write(self, record):
            raise Killed()

    monkeypatch.setattr(tf.io, "TFRecordWriter", DyingWriter)
    with pytest.raises(Killed):
        _read(root, tmp_path, image_size=16)
    monkeypatch.undo()
    assert not os.listdir(cache)
    # A half-written directory left by a harder kill is not mistaken for a cache.
    (cache / "train-16px-half.tmp-123").mkdir()
    (cache / "train-16px-half.tmp-123" / "images-00000.tfrecord").write_bytes(b"x")
    assert len(_read(root, tmp_path, image_size=16)) == N_SCENES


# --------------------------------------------------------------------------
# Bad inputs name the culprit.


def test_missing_and_corrupt_images_named(tmp_path):
    root = _make_folder(tmp_path)
    missing = os.path.join(root, "images", "train", "CLEVR_train_000003.png")
    os.remove(missing)
    for use_cache in (True, False):
        with pytest.raises(FileNotFoundError, match="CLEVR_train_000003.png"):
            _read(root, tmp_path, use_cache=use_cache)
    with open(missing, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match="CLEVR_train_000003.png"):
        _read(root, tmp_path, image_size=16)


def test_malformed_json_named(tmp_path):
    root = _make_folder(tmp_path)
    with open(os.path.join(root, "scenes", "CLEVR_train_scenes.json"), "w") as f:
        f.write('{"scenes": [')
    with pytest.raises(ValueError, match="CLEVR_train_scenes.json"):
        _read(root, tmp_path)
    with pytest.raises(FileNotFoundError, match="CLEVR_val_scenes.json"):
        clevr.build_dataset(root, "val")


@pytest.mark.parametrize("field", ["3d_coords", "pixel_coords", "shape", "color"])
def test_missing_field_named(tmp_path, field):
    scenes = [_scene(k) for k in range(3)]
    del scenes[2]["objects"][1][field]
    root = _make_folder(tmp_path, scenes)
    with pytest.raises(ValueError, match=rf"scene 2 \(CLEVR_train_000002.png\).*{field}"):
        _read(root, tmp_path)


def test_missing_scene_fields_named(tmp_path):
    scenes = [_scene(k) for k in range(3)]
    del scenes[1]["directions"]
    del scenes[2]["image_filename"]
    root = _make_folder(tmp_path, scenes[:2])
    with pytest.raises(ValueError, match="scene 1 .*directions"):
        _read(root, tmp_path)
    _write_scenes(root, [_scene(0), scenes[2]])
    with pytest.raises(ValueError, match="scene 1.*image_filename"):
        _read(root, tmp_path)


def test_unknown_attribute_value_named(tmp_path):
    scenes = [_scene(k) for k in range(2)]
    scenes[1]["objects"][0]["color"] = "pink"
    root = _make_folder(tmp_path, scenes)
    with pytest.raises(ValueError, match=r"CLEVR_train_000001.png.*color 'pink'"):
        _read(root, tmp_path)


def test_oversized_scene_raises_or_is_skipped(tmp_path):
    scenes = [_scene(k) for k in range(3)]
    scenes[1]["objects"] = [copy.deepcopy(SPHERE) for _ in range(11)]
    root = _make_folder(tmp_path, scenes)
    with pytest.raises(clevr.OversizedSceneError, match=r"CLEVR_train_000001.png.*11 objects"):
        _read(root, tmp_path)
    examples = _read(root, tmp_path, skip_oversized=True, image_size=16)
    assert len(examples) == 2
    # The survivors keep their own images: scenes 0 and 2.
    np.testing.assert_allclose(examples[1]["image"][..., 0], 80 / 255, atol=1e-6)


# --------------------------------------------------------------------------
# TFDS (mocked, no download).

# TFDS clevr's own label orders (its ClassLabel names), not the state layout's (dspn_tf.data.clevr_layout).
_TFDS_COLOR = ["gray", "blue", "brown", "yellow", "red", "green", "purple", "cyan"]
_TFDS_SHAPE = ["cube", "sphere", "cylinder"]
_TFDS_SIZE = ["small", "large"]
_TFDS_MATERIAL = ["rubber", "metal"]


def _tfds_as_dataset(self, split, decoders=None, **kwargs):
    del self, split, decoders, kwargs
    objects = [SPHERE, CUBE, CYLINDER]
    example = {
        "image": np.full([32, 48, 3], 100, np.uint8),
        "file_name": "CLEVR_train_000000.png",
        "objects": {
            "color": np.array([_TFDS_COLOR.index(o["color"]) for o in objects]),
            "shape": np.array([_TFDS_SHAPE.index(o["shape"]) for o in objects]),
            "size": np.array([_TFDS_SIZE.index(o["size"]) for o in objects]),
            "material": np.array([_TFDS_MATERIAL.index(o["material"]) for o in objects]),
            "rotation": np.zeros([3], np.float32),
            "3d_coords": np.array([o["3d_coords"] for o in objects], np.float32),
            "pixel_coords": np.array([o["pixel_coords"] for o in objects], np.float32),
        },
    }
    batch = tf.nest.map_structure(lambda x: np.stack([x, x]), example)
    return tf.data.Dataset.from_tensor_slices(batch)


def test_tfds_state_exact_and_boxes_refused(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_tfds_as_dataset):
        with pytest.raises(ValueError, match="allow_approximate_boxes"):
            clevr.build_dataset("tfds", "train", data_dir=str(tmp_path / "tfds"))
        examples = list(
            clevr.build_dataset(
                "tfds", "train", with_boxes=False, data_dir=str(tmp_path / "tfds"), cache_dir=str(tmp_path / "cache")
            ).as_numpy_iterator()
        )
    assert len(examples) == 2
    assert "boxes" not in examples[0]
    np.testing.assert_allclose(examples[0]["state"][:3], HAND_STATES, atol=1e-6)
    np.testing.assert_array_equal(examples[0]["mask"], [1] * 3 + [0] * 7)
    assert examples[0]["image"].shape == (128, 128, 3)
    np.testing.assert_allclose(examples[0]["image"], 100 / 255, atol=1e-6)


def test_tfds_approximate_boxes_use_nominal_camera(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_tfds_as_dataset):
        examples = list(
            clevr.build_dataset(
                "tfds",
                "validation",
                allow_approximate_boxes=True,
                use_cache=False,
                image_size=16,
                data_dir=str(tmp_path / "tfds"),
            ).as_numpy_iterator()
        )
    expected = [clevr.object_box(o, clevr.NOMINAL_RIGHT) for o in (SPHERE, CUBE, CYLINDER)]
    np.testing.assert_allclose(examples[1]["boxes"][:3], expected, atol=1e-6)
    np.testing.assert_array_equal(examples[1]["boxes"][3:], 0)


def test_tfds_oversized_scene_named_or_skipped(tmp_path):
    # (tfds.testing.mock_data's random examples are not used: its random
    # `objects` sequences come out with mismatched lengths now and then.)
    kwargs = dict(with_boxes=False, use_cache=False, image_size=16, max_objects=2, data_dir=str(tmp_path / "tfds"))
    with tfds.testing.mock_data(as_dataset_fn=_tfds_as_dataset):
        assert not list(clevr.build_dataset("tfds", "train", skip_oversized=True, **kwargs))
        with pytest.raises(tf.errors.OpError, match="CLEVR_train_000000.png has 3 objects"):
            list(clevr.build_dataset("tfds", "train", **kwargs))
