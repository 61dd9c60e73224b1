"""The TFDS builders of `dspn_tf.data.clevr_tfds`, checked with TFDS' own test case and by reading them back.

`tfds.testing.DatasetBuilderTestCase` prepares each builder (registration, features,
splits and their sizes, serialisation, reading back, no overlap between splits, no
`os` / `open` in the builder module): `clevr_with_directions` from a small fake
CLEVR v1.0 folder written here, `clevr_mini` from a few rendered scenes. Nothing is
downloaded. Then `tfds.load` of each is compared, field by field, with its source.
"""

import json
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dspn_tf.data import clevr, clevr_tfds
from dspn_tf.data.render import encode_png, make_scene

TINY = clevr_tfds.ClevrMiniConfig(name="tiny", num_train=3, num_validation=2, num_test=1, seed=4)


def _direction_set(angle):
    """CLEVR's six direction vectors for a camera turned by `angle` about the vertical."""
    right = [float(np.cos(angle)), float(np.sin(angle)), 0.0]
    front = [float(np.sin(angle)), -float(np.cos(angle)), 0.0]
    flip = lambda v: [-x for x in v]  # noqa: E731
    return {
        "right": right,
        "left": flip(right),
        "front": front,
        "behind": flip(front),
        "above": [0.0, 0.0, 1.0],
        "below": [0.0, 0.0, -1.0],
    }


def write_fake_clevr(parent, counts=(("train", 3), ("val", 2))):
    """A CLEVR_v1.0 folder in the real layout and schema: scene JSON (with `info`), 480x320 PNGs and no test scenes.

    Each scene has its own camera directions, so a builder that kept only one set
    (or TFDS clevr's nominal camera) would be caught.
    """
    rng = np.random.default_rng(0)
    root = parent / "CLEVR_v1.0"
    (root / "scenes").mkdir(parents=True)
    (root / "images" / "test").mkdir(parents=True)
    (root / "images" / "test" / "CLEVR_test_000000.png").write_bytes(encode_png(np.zeros((320, 480, 3), np.uint8)))
    all_scenes = {}
    for split, count in counts:
        (root / "images" / split).mkdir(parents=True)
        scenes = []
        for index in range(count):
            name = f"CLEVR_{split}_{index:06d}.png"
            image = rng.integers(0, 256, size=(320, 480, 3), dtype=np.uint8)
            (root / "images" / split / name).write_bytes(encode_png(image))
            objects = []
            for _ in range(int(rng.integers(1, 5))):
                x, y = rng.uniform(-3, 3, size=2)
                objects.append(
                    {
                        "color": str(rng.choice(clevr.COLORS)),
                        "material": str(rng.choice(clevr.MATERIALS)),
                        "shape": str(rng.choice(clevr.SHAPES)),
                        "size": str(rng.choice(clevr.SIZES)),
                        "rotation": float(rng.uniform(0, 360)),
                        "3d_coords": [float(x), float(y), 0.35],
                        "pixel_coords": [
                            int(rng.integers(0, 480)),
                            int(rng.integers(0, 320)),
                            float(rng.uniform(8, 14)),
                        ],
                    }
                )
            scenes.append(
                {
                    "split": split,
                    "image_index": index,
                    "image_filename": name,
                    "objects": objects,
                    "relationships": {"right": [], "left": [], "front": [], "behind": []},
                    "directions": _direction_set(0.1 * (index + 1) + (split == "val")),
                }
            )
        (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(
            json.dumps({"info": {"split": split, "version": "1.0"}, "scenes": scenes})
        )
        all_scenes[split] = scenes
    return root, all_scenes


class ClevrWithDirectionsTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = clevr_tfds.ClevrWithDirections
    SPLITS = {"train": 3, "validation": 2}

    @classmethod
    def setUpClass(cls):
        cls._fake = tempfile.mkdtemp()
        write_fake_clevr(pathlib.Path(cls._fake))
        cls.EXAMPLE_DIR = cls._fake  # The manual folder: it holds CLEVR_v1.0/.
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls._fake)


class ClevrMiniTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = clevr_tfds.ClevrMini
    BUILDER_CONFIG_NAMES_TO_TEST = [TINY]  # A few scenes; the named configs differ only in their counts.
    SPLITS = {"train": 3, "validation": 2, "test": 1}

    @classmethod
    def setUpClass(cls):
        cls._empty = tempfile.mkdtemp()  # TFDS' test case wants a download folder; nothing is read from it.
        cls.EXAMPLE_DIR = cls._empty
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls._empty)


def test_clevr_with_directions_keeps_every_scene_and_its_directions(tmp_path):
    root, scenes = write_fake_clevr(tmp_path / "manual")
    builder = tfds.builder("clevr_with_directions", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    for split, tfds_split in (("train", "train"), ("val", "validation")):
        examples = list(tfds.as_numpy(builder.as_dataset(split=tfds_split, shuffle_files=False)))
        by_name = {e["file_name"].decode(): e for e in examples}
        assert sorted(by_name) == sorted(s["image_filename"] for s in scenes[split])
        for scene in scenes[split]:
            example = by_name[scene["image_filename"]]
            png = (root / "images" / split / scene["image_filename"]).read_bytes()
            decoded = tfds.features.Image(shape=(320, 480, 3)).decode_example_np(png)
            np.testing.assert_array_equal(example["image"], decoded)
            for name in clevr_tfds.DIRECTIONS:
                np.testing.assert_allclose(example["directions"][name], scene["directions"][name], rtol=1e-6)
            objects = example["objects"]
            assert len(objects["shape"]) == len(scene["objects"])
            for i, obj in enumerate(scene["objects"]):
                for name, vocabulary in clevr.ATTRIBUTES:
                    assert vocabulary[objects[name][i]] == obj[name]
                np.testing.assert_allclose(objects["3d_coords"][i], obj["3d_coords"], rtol=1e-6)
                # The exact box (from this scene's own camera) comes out of the TFDS example.
                tfds_obj = {"3d_coords": objects["3d_coords"][i], "pixel_coords": objects["pixel_coords"][i], **obj}
                np.testing.assert_allclose(
                    clevr.object_box(tfds_obj, dict(example["directions"])),
                    clevr.object_box(obj, scene["directions"]),
                    rtol=1e-5,
                    atol=1e-6,
                )


def test_clevr_with_directions_names_what_is_missing(tmp_path):
    root, _ = write_fake_clevr(tmp_path / "manual", counts=(("train", 1),))
    builder = tfds.builder("clevr_with_directions", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match="(?s)CLEVR_val_scenes.json does not exist.*CLEVR_v1.0.zip"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    (root / "images" / "val").mkdir()
    scene = {"image_filename": "CLEVR_val_000000.png", "objects": []}  # No directions.
    (root / "images" / "val" / "CLEVR_val_000000.png").write_bytes(encode_png(np.zeros((320, 480, 3), np.uint8)))
    (root / "scenes" / "CLEVR_val_scenes.json").write_text(json.dumps({"scenes": [scene]}))
    with pytest.raises(ValueError, match=r"CLEVR_val_scenes.json scene 0: the scene has no field 'directions'"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))


def test_tfds_load_builds_the_generated_scenes_offline(tmp_path):
    ds = tfds.load("clevr_mini", split="validation", builder_kwargs={"config": TINY}, data_dir=str(tmp_path))
    examples = list(tfds.as_numpy(ds))
    assert len(examples) == 2
    for example in examples:
        index = int(example["file_name"].decode()[len("CLEVR_val_") : -len(".png")])
        scene, image = make_scene(TINY.seed, "val", index)
        np.testing.assert_array_equal(example["image"], image)
        assert [clevr.SHAPES[s] for s in example["objects"]["shape"]] == [o["shape"] for o in scene["objects"]]
        np.testing.assert_allclose(
            example["objects"]["3d_coords"], [o["3d_coords"] for o in scene["objects"]], rtol=1e-6
        )
        for name in clevr_tfds.DIRECTIONS:
            np.testing.assert_allclose(example["directions"][name], scene["directions"][name], rtol=1e-6)
    # The existing reader takes it as it takes TFDS clevr: labels equal those of the scenes.
    states = clevr.build_dataset(
        "tfds", "val", tfds_name="clevr_mini/tiny", data_dir=str(tmp_path), with_boxes=False, use_cache=False
    )
    got = sorted(tuple(e["state"].numpy().ravel().round(5)) for e in states)
    expected = sorted(tuple(clevr.scene_state(make_scene(TINY.seed, "val", i)[0])[0].ravel().round(5)) for i in (0, 1))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="`num_train` must be an int >= 0; received -1"):
        clevr_tfds.ClevrMiniConfig(name="bad", num_train=-1)
