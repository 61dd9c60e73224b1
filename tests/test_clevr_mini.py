"""Tests for the offline CLEVR-format generator (dspn_tf.data.clevr_mini)."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from dspn_tf.data import clevr_mini, render

NUM_TRAIN, NUM_VAL, SEED = 8, 3, 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    root = clevr_mini.generate(str(out), num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, workers=2, chunk_size=3)
    return out, root


def _scenes(root, split):
    with open(os.path.join(root, "scenes", f"CLEVR_{split}_scenes.json")) as f:
        return json.load(f)


def spec_box(obj, right):
    """docs/algorithm.md §8 box in pixels, written out independently of the code under test."""
    x, y = obj["pixel_coords"][:2]
    x1, y1, z1 = obj["3d_coords"]
    cos, sin = right[0], right[1]
    x1r = x1 * cos + y1 * sin
    y1r = x1r * -sin + y1 * cos
    h_d = 6.9 * z1 * (15 - y1r) / 2
    h_u = w_l = w_r = h_d
    if obj["shape"] == "cylinder":
        d, h, s = 9.4 + y1r, 6.4, z1
        h_u *= (s * (h / d + 1)) / ((s * (h / d + 1)) - (s * (h - s) / d))
        h_d = h_u * (h - s + d) / (h + s + d)
        w_l *= 11 / (10 + y1r)
        w_r = w_l
    elif obj["shape"] == "cube":
        h_u *= 1.3 * 10 / (10 + y1r)
        h_d = w_l = w_r = h_u
    return x - w_l, y - h_d, x + w_r, y + h_u


def test_layout_and_schema(dataset):
    out, root = dataset
    assert sorted(os.listdir(out)) == ["CLEVR_v1.0"]  # No temp leftovers.
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        payload = _scenes(root, split)
        assert payload["info"]["split"] == split
        scenes = payload["scenes"]
        assert [s["image_index"] for s in scenes] == list(range(count))
        for scene in scenes:
            assert set(scene) == {"image_index", "objects", "relationships", "image_filename", "split", "directions"}
            assert scene["split"] == split
            assert scene["image_filename"] == f"CLEVR_{split}_{scene['image_index']:06d}.png"
            assert set(scene["directions"]) == {"left", "right", "front", "behind", "above", "below"}
            assert set(scene["relationships"]) == {"left", "right", "front", "behind"}
            n = len(scene["objects"])
            assert 3 <= n <= 10
            for rel in scene["relationships"].values():
                assert len(rel) == n
            for obj in scene["objects"]:
                assert set(obj) == {"color", "size", "rotation", "shape", "3d_coords", "material", "pixel_coords"}
                assert obj["shape"] in {"cube", "sphere", "cylinder"}
                assert obj["color"] in {"gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow"}
                assert obj["size"] in {"large", "small"}
                assert obj["material"] in {"rubber", "metal"}
                assert 0 <= obj["rotation"] < 360
                x, y, z = obj["3d_coords"]
                assert -3 <= x <= 3 and -3 <= y <= 3
                assert z == {"large": 0.7, "small": 0.35}[obj["size"]]
                px, py, depth = obj["pixel_coords"]
                assert isinstance(px, int) and isinstance(py, int)
                assert 0 <= px < 480 and 0 <= py < 320 and depth > 0
            image = Image.open(os.path.join(root, "images", split, scene["image_filename"]))
            assert image.size == (480, 320) and image.mode in ("RGB", "RGBA")


def test_directions_match_real_clevr(dataset):
    _, root = dataset
    right = _scenes(root, "train")["scenes"][0]["directions"]["right"]
    # Value shared by the real CLEVR scenes (camera azimuth).
    np.testing.assert_allclose(right, [0.6563, 0.7545, 0.0], atol=2e-3)


def test_no_interpenetration(dataset):
    _, root = dataset
    for scene in _scenes(root, "train")["scenes"]:
        objs = scene["objects"]
        for i in range(len(objs)):
            for j in range(i):
                (xi, yi, ri), (xj, yj, rj) = objs[i]["3d_coords"], objs[j]["3d_coords"]
                assert math.hypot(xi - xj, yi - yj) - ri - rj >= clevr_mini.MIN_DIST - 1e-9


def test_deterministic_regardless_of_workers(dataset, tmp_path):
    _, root = dataset
    other = clevr_mini.generate(str(tmp_path), num_train=NUM_TRAIN, num_val=NUM_VAL, seed=SEED, workers=1, chunk_size=5)
    for sub in (
        "scenes/CLEVR_train_scenes.json",
        "scenes/CLEVR_val_scenes.json",
        "images/train/CLEVR_train_000003.png",
        "images/val/CLEVR_val_000001.png",
    ):
        with open(os.path.join(root, sub), "rb") as a, open(os.path.join(other, sub), "rb") as b:
            assert a.read() == b.read(), sub
    scene_a, _ = clevr_mini.make_scene(SEED, "train", 0)
    scene_b, _ = clevr_mini.make_scene(SEED + 1, "train", 0)
    assert scene_a != scene_b


def test_projection_hits_object(dataset):
    """The pixel at a small object's pixel_coords shows that object's colour."""
    _, root = dataset
    checked = 0
    for scene in _scenes(root, "train")["scenes"]:
        image = np.asarray(Image.open(os.path.join(root, "images", "train", scene["image_filename"])).convert("RGB"))
        _, ids = clevr_mini.render_scene(scene)
        for index, obj in enumerate(scene["objects"]):
            px, py = obj["pixel_coords"][:2]
            if obj["size"] != "small" or ids[py, px] != index:
                continue  # Hidden centre: another object is in front.
            checked += 1
            pixel = image[py, px].astype(float)
            base = np.array(clevr_mini.COLORS[obj["color"]], float)
            if obj["color"] == "gray":
                assert np.ptp(pixel) < 25
            else:
                # Hue survives shading: the colour's dominant channel stays dominant.
                assert np.argmax(pixel) == np.argmax(base) or pixel[np.argmax(base)] >= pixel.max() - 10
    assert checked >= 3


def test_spec_boxes_contain_object_pixels(dataset):
    _, root = dataset
    fractions = []
    for scene in _scenes(root, "train")["scenes"]:
        _, ids = clevr_mini.render_scene(scene)
        for index, obj in enumerate(scene["objects"]):
            ys, xs = np.nonzero(ids == index)
            x0, y0, x1, y1 = spec_box(obj, scene["directions"]["right"])
            inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
            fractions.append(inside.mean())
            # And the box is centred on the object, not merely huge.
            assert x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1
            assert (x1 - x0) * (y1 - y0) <= 4 * len(xs) or len(xs) < 800  # Occluded.
    fractions = np.array(fractions)
    assert np.median(fractions) > 0.95
    assert np.mean(fractions > 0.8) > 0.9


def test_occlusion_nearer_object_wins():
    scene = {
        "objects": [
            {
                "color": "red",
                "size": "large",
                "rotation": 0.0,
                "shape": "sphere",
                "3d_coords": [0.0, 0.0, 0.7],
                "material": "rubber",
            },
            {
                "color": "blue",
                "size": "small",
                "rotation": 0.0,
                "shape": "cube",
                "3d_coords": [1.5, -1.3, 0.35],
                "material": "rubber",
            },  # Towards the camera.
        ]
    }
    _, ids = clevr_mini.render_scene(scene)
    both = [render.renderer().camera.project(np.array([o["3d_coords"]]))[0] for o in scene["objects"]]
    px, py = np.round(both[1][:2]).astype(int)
    assert ids[py, px] == 1
    assert both[1][2] < both[0][2]
    # Reversing the draw order must not change what is visible.
    _, ids_rev = clevr_mini.render_scene({"objects": scene["objects"][::-1]})
    np.testing.assert_array_equal(np.where(ids_rev >= 0, 1 - ids_rev, -1), ids)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        clevr_mini.generate(str(tmp_path), num_train=-1, num_val=1, seed=0)
    with pytest.raises(ValueError, match="both 0"):
        clevr_mini.generate(str(tmp_path), num_train=0, num_val=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        clevr_mini.generate(str(tmp_path), num_train=1, num_val=0, seed=1.5)
    with pytest.raises(ValueError, match="workers"):
        clevr_mini.generate(str(tmp_path), num_train=1, num_val=0, seed=0, workers=0)
    clevr_mini.generate(str(tmp_path), num_train=1, num_val=0, seed=0, workers=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        clevr_mini.generate(str(tmp_path), num_train=1, num_val=0, seed=0, workers=1)
    clevr_mini.generate(str(tmp_path), num_train=0, num_val=1, seed=0, workers=1, overwrite=True)
    assert os.listdir(os.path.join(tmp_path, "CLEVR_v1.0", "images")) == ["val"]
    assert sorted(os.listdir(tmp_path)) == ["CLEVR_v1.0"]
    with pytest.raises(SystemExit):
        clevr_mini.main(["--out", str(tmp_path / "x"), "--train", "-3"])


def test_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "_render_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        clevr_mini.generate(str(tmp_path), num_train=2, num_val=0, seed=0, workers=1)
    assert os.listdir(tmp_path) == []
