"""TFDS builders of CLEVR-format scenes that keep each scene's camera `directions`.

Importing this module registers two `tfds.core.GeneratorBasedBuilder`s:

- `clevr_mini`: the generated scenes of `dspn_tf.data.render` (what
  `python -m dspn_tf.data.clevr_mini` writes), rendered while the dataset is
  prepared: `tfds.load("clevr_mini/1k")` builds them offline, no download.
- `clevr_with_directions`: real CLEVR v1.0 from a manual download. The public
  TFDS `clevr` drops the scenes' `directions`, which the exact box formula needs
  (`dspn_tf.data.clevr.object_box(obj, directions)`, docs/algorithm.md §8); this
  builder keeps them.

Both have the features of TFDS `clevr` (`image`, `file_name`, `objects` with
`color`, `material`, `shape`, `size` as class labels in `dspn_tf.data.clevr_layout`'s
orders, `rotation`, `3d_coords`, `pixel_coords`) plus `directions`: a dict of the six
unit vectors `right`, `left`, `front`, `behind`, `above`, `below`. So
`dspn_tf.data.clevr.build_dataset("tfds", split, tfds_name=...)` reads them as it reads
TFDS `clevr`. Files are read through `etils.epath` (TFDS' convention), so the
builders work on any file system TFDS supports.
"""

import json

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from dspn_tf.data import clevr_layout
from dspn_tf.data.render import camera, scenes

DIRECTIONS = ("right", "left", "front", "behind", "above", "below")

_CITATION = """\
@inproceedings{johnson2017clevr,
  title={CLEVR: A Diagnostic Dataset for Compositional Language and Elementary Visual Reasoning},
  author={Johnson, Justin and Hariharan, Bharath and van der Maaten, Laurens and Fei-Fei, Li and
          Zitnick, C. Lawrence and Girshick, Ross},
  booktitle={CVPR},
  year={2017}
}
"""
_HOMEPAGE = "https://cs.stanford.edu/people/jcjohns/clevr/"


def features():
    """The `tfds.features.FeaturesDict` of both builders: TFDS `clevr`'s, plus `directions`."""
    vector = lambda: tfds.features.Tensor(shape=(3,), dtype=np.float32)  # noqa: E731
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(camera.HEIGHT, camera.WIDTH, 3)),
            "file_name": tfds.features.Text(),
            "objects": tfds.features.Sequence(
                {
                    "color": tfds.features.ClassLabel(names=clevr_layout.COLORS),
                    "material": tfds.features.ClassLabel(names=clevr_layout.MATERIALS),
                    "shape": tfds.features.ClassLabel(names=clevr_layout.SHAPES),
                    "size": tfds.features.ClassLabel(names=clevr_layout.SIZES),
                    "rotation": tfds.features.Tensor(shape=(), dtype=np.float32),
                    "3d_coords": vector(),
                    "pixel_coords": vector(),
                }
            ),
            "directions": tfds.features.FeaturesDict({name: vector() for name in DIRECTIONS}),
        }
    )


def example_of(scene, image, where):
    """The TFDS example of a scene dict in CLEVR's JSON schema and its image (array or file path).

    Raises:
        ValueError: naming `where` (file and scene) and the field if a field is missing or malformed.
    """

    def field(obj, name, what):
        if not isinstance(obj, dict) or name not in obj:
            raise ValueError(f"{where}: {what} has no field {name!r}.")
        return obj[name]

    directions = field(scene, "directions", "the scene")
    objects = field(scene, "objects", "the scene")
    if not isinstance(objects, list):
        raise ValueError(f"{where}: field 'objects' is not a list.")
    names = ("color", "material", "shape", "size", "rotation", "3d_coords", "pixel_coords")
    try:
        return {
            "image": image,
            "file_name": field(scene, "image_filename", "the scene"),
            "objects": [{name: field(obj, name, f"object {i}") for name in names} for i, obj in enumerate(objects)],
            "directions": {
                name: np.asarray(field(directions, name, "'directions'"), np.float32).reshape(3) for name in DIRECTIONS
            },
        }
    except (TypeError, ValueError) as e:
        message = str(e)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


class ClevrMiniConfig(tfds.core.BuilderConfig):
    """How many generated scenes each split has, and the renderer's seed.

    Args:
        name: The config's name (`tfds.load("clevr_mini/<name>")`).
        description: One line for the TFDS catalogue.
        num_train: Scenes of the `train` split.
        num_validation: Scenes of the `validation` split.
        num_test: Scenes of the `test` split.
        seed: Seed of `dspn_tf.data.render.make_scene`; each split and scene index
            has its own random stream, so a split's scenes do not depend on the others' counts.

    Raises:
        ValueError: if a count is not an int >= 0.
    """

    # An explicit __init__ rather than dataclass fields: the generated one would carry
    # BuilderConfig's string annotations, which do not resolve outside TFDS.
    def __init__(self, *, name, description="", num_train=10_000, num_validation=1_000, num_test=1_000, seed=0):
        super().__init__(name=name, description=description)
        counts = {"num_train": num_train, "num_validation": num_validation, "num_test": num_test, "seed": seed}
        for key, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"ClevrMiniConfig {name!r}: `{key}` must be an int >= 0; received {count!r}.")
        self.num_train, self.num_validation, self.num_test, self.seed = num_train, num_validation, num_test, seed


class ClevrMini(tfds.core.GeneratorBasedBuilder):
    """Generated CLEVR-format scenes (3 to 10 objects, CLEVR's vocabulary and placement rules), rendered at 480x320.

    The scenes and images of `dspn_tf.data.render.make_scene(seed, split, index)`,
    pixel for pixel the ones `python -m dspn_tf.data.clevr_mini` writes for the same
    seed, rendered on the CPU while the dataset is prepared (about 10 ms a scene);
    nothing is downloaded.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: the scenes of dspn_tf's renderer, with their camera directions."}
    BUILDER_CONFIGS = [
        ClevrMiniConfig(name="10k", description="10,000 train, 1,000 validation and 1,000 test scenes."),
        ClevrMiniConfig(
            name="1k",
            description="1,000 train, 100 validation and 100 test scenes.",
            num_train=1_000,
            num_validation=100,
            num_test=100,
        ),
    ]

    def _info(self):
        return self.dataset_info_from_configs(features=features(), homepage=_HOMEPAGE, citation=_CITATION)

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the scenes are rendered here.
        config = self.builder_config
        counts = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
        for split, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(
                    f"ClevrMiniConfig {config.name!r}: num_{split} must be an int >= 0; received {count!r}."
                )
        return {split: self._generate_examples(split, count) for split, count in counts.items() if count}

    def _generate_examples(self, split, count):
        # The renderer names its splits as CLEVR's files do ("val").
        render_split = {"validation": "val"}.get(split, split)
        for index in range(count):
            scene, image = scenes.make_scene(self.builder_config.seed, render_split, index)
            where = f"clevr_mini {split} scene {index}"
            yield scene["image_filename"], example_of(scene, image, where)


class ClevrWithDirections(tfds.core.GeneratorBasedBuilder):
    """CLEVR v1.0 (train and validation scenes) with each scene's camera `directions`.

    Like TFDS `clevr`, without the question-answer pairs (and without the test split, which
    has no scene annotations), plus the `directions` of the scene file, so object boxes can be
    computed exactly. Reads a manually downloaded `CLEVR_v1.0` folder.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: CLEVR v1.0 scenes with their camera directions."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download CLEVR_v1.0.zip (18 GB) from https://cs.stanford.edu/people/jcjohns/clevr/ and
    extract it into the manual folder (default ~/tensorflow_datasets/downloads/manual/, or pass
    download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=...)}),
    so that it holds CLEVR_v1.0/scenes/CLEVR_{train,val}_scenes.json and CLEVR_v1.0/images/{train,val}/.
    The manual folder may also be the CLEVR_v1.0 folder itself.
    """

    def _info(self):
        return self.dataset_info_from_configs(features=features(), homepage=_HOMEPAGE, citation=_CITATION)

    def _split_generators(self, dl_manager):
        manual = epath.Path(dl_manager.manual_dir)
        root = manual if (manual / "scenes").exists() else manual / "CLEVR_v1.0"
        files = {split: root / "scenes" / f"CLEVR_{split}_scenes.json" for split in ("train", "val")}
        for path in files.values():
            if not path.exists():
                raise FileNotFoundError(
                    f"clevr_with_directions: the scene file {path} does not exist in the manual folder {manual}.\n"
                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
        return {
            "train": self._generate_examples(root, files["train"], "train"),
            "validation": self._generate_examples(root, files["val"], "val"),
        }

    def _generate_examples(self, root, scene_file, split):
        try:
            data = json.loads(scene_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"Malformed scene JSON {scene_file}: {e}") from e
        scene_list = data.get("scenes") if isinstance(data, dict) else None
        if not isinstance(scene_list, list):
            raise ValueError(f"Malformed scene JSON {scene_file}: no 'scenes' list.")
        image_dir = root / "images" / split
        for index, scene in enumerate(scene_list):
            where = f"{scene_file} scene {index}"
            name = scene.get("image_filename") if isinstance(scene, dict) else None
            if not isinstance(name, str) or not name:
                raise ValueError(f"{where}: field 'image_filename' is missing or not a file name.")
            image = image_dir / name
            if not image.exists():
                raise FileNotFoundError(f"{where}: its image {image} does not exist.")
            yield name, example_of(scene, image, where)
