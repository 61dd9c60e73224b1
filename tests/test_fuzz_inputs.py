"""Property-based tests of the readers and the flags against hostile input (issue 13).

Every generated input must end in a correct result (checked against an
independent computation) or in a named error of the library whose message names
the culprit (file, scene, field or flag): never another exception, a hang or a
silently wrong value. Each case runs under a hypothesis deadline and a hard
alarm, so a hang fails the test instead of stalling the suite. `CASES` counts the
cases tried (printed with `-s`).
"""

import contextlib
import datetime
import gzip
import io
import json
import math
import os
import signal
import struct
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from absl import flags as absl_flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dspn_tf.data import clevr, set_mnist
from tests.test_train import ROOT
from train import config as config_lib

CASES = {}
FUZZ = settings(
    deadline=datetime.timedelta(seconds=20),
    derandomize=True,  # The same cases on every run: a failure is reproducible, the suite's time stable.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@contextlib.contextmanager
def hard_limit(seconds, what):
    """Fails a case that runs longer than `seconds` (a hang), which a hypothesis deadline alone cannot stop."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"{what} ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module", autouse=True)
def _report_cases():
    yield
    print(f"\nfuzz cases tried: {CASES} (total {sum(CASES.values())})")


def _count(name):
    CASES[name] = CASES.get(name, 0) + 1


# --------------------------------------------------------------------------
# IDX files.

_DIM = st.one_of(st.integers(0, 40), st.sampled_from([28, 28, 28, 2**31, 2**32 - 1]))


@st.composite
def idx_files(draw):
    count = draw(st.integers(0, 4))
    magic = draw(
        st.sampled_from([set_mnist.IMAGES_MAGIC] * 4 + [set_mnist.LABELS_MAGIC, 0, 0x0803 + 0x0100, 2**32 - 1])
    )
    ndim = magic & 0xFF
    dims = [count, 28, 28]
    if draw(st.booleans()):  # Wrong or huge dimensions.
        dims = draw(st.lists(_DIM, min_size=ndim, max_size=ndim))
    dims = (dims + [0] * ndim)[:ndim] if ndim <= 8 else dims
    data_size = math.prod(dims[:ndim]) if ndim <= 8 and math.prod(dims[:ndim]) < 10**5 else 784
    pixels = draw(st.binary(min_size=min(data_size, 64), max_size=min(data_size, 64)))
    data = (pixels * (data_size // max(len(pixels), 1) + 1))[:data_size] if pixels else bytes(data_size)
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims[: min(ndim, 8)]) + data
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:
        raw = raw[:cut]
    raw += draw(st.binary(max_size=3))  # Sometimes trailing bytes.
    compressed = draw(st.booleans())
    if compressed:
        raw = gzip.compress(raw)
        damage = draw(st.one_of(st.none(), st.integers(10, max(10, len(raw) - 1))))
        if damage is not None and damage < len(raw):
            raw = raw[:damage] + bytes([raw[damage] ^ 0x5A]) + raw[damage + 1 :]
    return raw, compressed


@settings(FUZZ, max_examples=150)
@given(idx_files())
def test_idx_reader(case):
    raw, compressed = case
    _count("idx")
    with tempfile.TemporaryDirectory() as folder, hard_limit(10, "reading an IDX file"):
        path = os.path.join(folder, "train-images-idx3-ubyte" + (".gz" if compressed else ""))
        with open(path, "wb") as f:
            f.write(raw)
        try:
            images, _ = set_mnist.load_idx_split(folder, "train")
        except ValueError as e:
            assert path in str(e)
            return
        # Accepted: it must be exactly a well-formed image file.
        plain = gzip.decompress(raw) if compressed else raw
        magic, count, rows, cols = struct.unpack(">IIII", plain[:16])
        assert (magic, rows, cols) == (set_mnist.IMAGES_MAGIC, 28, 28)
        assert len(plain) == 16 + count * 784
        np.testing.assert_array_equal(images, np.frombuffer(plain[16:], np.uint8).reshape(count, 28, 28))


# --------------------------------------------------------------------------
# Scene JSON.

_GOOD = {"color": "red", "shape": "cube", "size": "large", "material": "metal"}
_NUMBER = st.one_of(
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e300, 1e308]),
    st.integers(-(10**6), 10**6),
)
_JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.just({}))


@st.composite
def scene_objects(draw):
    obj = {
        "3d_coords": draw(st.lists(_NUMBER, min_size=3, max_size=3)),
        "pixel_coords": [draw(st.floats(0, 480)), draw(st.floats(0, 320)), draw(st.floats(5, 15))],
        **_GOOD,
    }
    for name in draw(st.lists(st.sampled_from(sorted(obj)), max_size=2, unique=True)):
        how = draw(st.sampled_from(["drop", "junk", "unknown", "number"]))
        if how == "drop":
            del obj[name]
        elif how == "junk":
            obj[name] = draw(_JUNK)
        elif how == "unknown":
            obj[name] = draw(st.sampled_from(["Red", "pyramid", "", "huge", "wood"]))
        else:
            obj[name] = draw(st.one_of(_NUMBER, st.lists(_NUMBER, max_size=4)))
    return obj


@st.composite
def scene_files(draw):
    scenes = []
    for k in range(draw(st.integers(0, 3))):
        scene = {
            "image_filename": f"CLEVR_train_{k:06d}.png",
            "directions": {"right": draw(st.lists(_NUMBER, min_size=3, max_size=3))},
            "objects": draw(st.lists(scene_objects(), max_size=12)),
        }
        if draw(st.integers(0, 5)) == 0:
            scene[draw(st.sampled_from(["image_filename", "directions", "objects"]))] = draw(_JUNK)
        scenes.append(scene)
    payload = {"info": {}, "scenes": scenes}
    if draw(st.integers(0, 12)) == 0:
        payload = draw(st.one_of(_JUNK, st.just({"scenes": {}})))
    text = json.dumps(payload)  # NaN and Infinity written as Python's json does (CLEVR readers accept them).
    if draw(st.integers(0, 12)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    if draw(st.integers(0, 20)) == 0:
        text = "[" * 100_000  # Nested beyond the parser's recursion limit.
    return payload, text


def _valid_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e6


def _expected_state(obj):
    """The 18 features computed independently of the library (None if the object must be refused)."""
    coords = obj.get("3d_coords")
    if not (isinstance(coords, list) and len(coords) >= 3 and all(_valid_number(v) for v in coords[:3])):
        return None
    pixels = obj.get("pixel_coords")
    if not (isinstance(pixels, list) and len(pixels) >= 2 and all(_valid_number(v) for v in pixels[:2])):
        return None
    out = [v / 3 for v in coords[:3]]
    for name, vocabulary in clevr.ATTRIBUTES:
        value = obj.get(name)
        if not isinstance(value, str) or value not in vocabulary:
            return None
        out += [float(value == v) for v in vocabulary]
    return np.array(out, np.float32)


def _expected_labels(payload):
    """The expected states and masks of a scene file, or None if it must be refused."""
    if not isinstance(payload, dict) or not isinstance(payload.get("scenes"), list):
        return None
    states, masks = [], []
    for scene in payload["scenes"]:
        if (
            not isinstance(scene, dict)
            or not isinstance(scene.get("image_filename"), str)
            or not scene["image_filename"]
        ):
            return None
        objects, directions = scene.get("objects"), scene.get("directions")
        if not isinstance(objects, list) or len(objects) > clevr.MAX_OBJECTS or not isinstance(directions, dict):
            return None
        right = directions.get("right")
        if not (isinstance(right, list) and len(right) >= 2 and all(_valid_number(v) for v in right[:2])):
            return None
        state, mask = np.zeros([10, 18], np.float32), np.zeros([10], np.float32)
        for i, obj in enumerate(objects):
            expected = _expected_state(obj) if isinstance(obj, dict) else None
            if expected is None:
                return None
            state[i], mask[i] = expected, 1
        states.append(state)
        masks.append(mask)
    return states, masks


@settings(FUZZ, max_examples=200)
@given(scene_files())
def test_scene_json_reader(case):
    payload, text = case
    _count("scene_json")
    with tempfile.TemporaryDirectory() as root, hard_limit(10, "reading a scene file"):
        os.makedirs(os.path.join(root, "scenes"))
        scene_file = os.path.join(root, "scenes", "CLEVR_train_scenes.json")
        with open(scene_file, "w") as f:
            f.write(text)
        try:
            labels = clevr.load_scenes(root, "train")
        except ValueError as e:  # OversizedSceneError is one.
            message = str(e)
            assert scene_file in message, message
            if text == json.dumps(payload):  # Refused: the independent reading must refuse it too.
                assert _expected_labels(payload) is None, message
            return
        # Accepted: every value finite, and the states those of the independent computation.
        for key in ("state", "boxes", "mask"):
            assert np.all(np.isfinite(labels[key])), key
        expected = _expected_labels(payload) if text == json.dumps(payload) else None
        if expected is not None and expected[0]:
            np.testing.assert_allclose(labels["state"], np.stack(expected[0]).reshape(-1, 10, 18), rtol=1e-6)
            np.testing.assert_array_equal(labels["mask"], np.stack(expected[1]).reshape(-1, 10))


# --------------------------------------------------------------------------
# PNG files.


@st.composite
def png_files(draw):
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["rgb", "rgba", "grey", "grey16", "rgb16", "palette"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind in ("grey16", "rgb16"):
        array = rng.integers(0, 65536, (height, width, 1 if kind == "grey16" else 3)).astype(np.uint16)
        raw = tf.io.encode_png(array).numpy()
        expected = np.round(array.astype(np.float64) / 257).astype(np.uint8)
    else:
        channels = {"rgb": 3, "rgba": 4, "grey": 1, "palette": 3}[kind]
        array = rng.integers(0, 256, (height, width, channels)).astype(np.uint8)
        if kind == "palette":
            buffer = io.BytesIO()
            image = Image.fromarray(array).quantize(colors=8)
            image.save(buffer, format="PNG")
            raw, array = buffer.getvalue(), np.asarray(image.convert("RGB"))
        else:
            raw = tf.io.encode_png(array).numpy()
        expected = array
    expected = expected[..., :3] if expected.shape[-1] >= 3 else np.repeat(expected, 3, axis=-1)
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "garbage", "empty"]))
    if damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip":
        at = draw(st.integers(8, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
    elif damage == "garbage":
        raw = draw(st.binary(max_size=200))
    elif damage == "empty":
        raw = b""
    return raw, expected, damage


def _one_scene_folder(root, raw):
    os.makedirs(os.path.join(root, "scenes"))
    os.makedirs(os.path.join(root, "images", "train"))
    scene = {"image_filename": "CLEVR_train_000000.png", "directions": {"right": [0.6, 0.7, 0.0]}, "objects": []}
    with open(os.path.join(root, "scenes", "CLEVR_train_scenes.json"), "w") as f:
        json.dump({"scenes": [scene]}, f)
    path = os.path.join(root, "images", "train", scene["image_filename"])
    with open(path, "wb") as f:
        f.write(raw)
    return path


@settings(FUZZ, max_examples=40)
@given(png_files())
def test_png_reader(case):
    raw, expected, damage = case
    _count("png")
    with tempfile.TemporaryDirectory() as root, hard_limit(30, "reading a PNG"):
        path = _one_scene_folder(os.path.join(root, "CLEVR_v1.0"), raw)
        try:
            ds = clevr.build_dataset(os.path.join(root, "CLEVR_v1.0"), "train", image_size=8, cache_dir=root + "/c")
            (example,) = list(ds.as_numpy_iterator())
        except ValueError as e:
            assert path in str(e) and damage != "none", str(e)
            return
        # Decoded: the pixels must be the file's (as PIL reads it), resized like every image.
        with Image.open(io.BytesIO(raw)) as image:
            image.load()  # A file TensorFlow decodes but PIL refuses fails the test here.
        if damage == "none":
            want = clevr.resize_image(expected, 8).numpy().astype(np.float32) / 255.0
            np.testing.assert_allclose(example["image"], want, atol=1.5 / 255)


# --------------------------------------------------------------------------
# Flag values.

_CONFIG = os.path.join(ROOT, "configs/clevr_mini_state_autoencoder_dspn.cfg")
_INT_FLAGS = {  # flag: smallest valid value
    "batch_size": 1,
    "dim": 1,
    "latent": 1,
    "iters": 0,
    "train_steps": 1,
    "generated_train": 1,
    "generated_val": 1,
    "image_size": 1,
    "checkpoint_every": 1,
    "log_every": 1,
    "shuffle_buffer": 1,
    "keep_checkpoints": 1,
    "eval_every": 0,
    "image_every": 0,
    "seed": 0,
    "n_pieces": 1,
    "max_iters": 0,
}
_CHOICES = {
    "decoder": ["dspn", "mlp", "lstm"],
    "loss": ["chamfer", "hungarian"],
    "strategy": ["default", "mirrored", "multi_worker"],
    "inner_gradient": ["unrolled", "implicit"],
    "dataset": ["set_mnist", "clevr_state", "clevr_boxes", "clevr_state_autoencoder"],
}
_TEXT = st.text(alphabet="0123456789-+.,:%ex abc", max_size=8)


@st.composite
def flag_overrides(draw):
    overrides, valid = [], True
    for name in draw(st.lists(st.sampled_from(sorted(_INT_FLAGS)), max_size=3, unique=True)):
        value = draw(st.one_of(st.integers(-5, 5), st.integers(-(2**40), 2**40)))
        overrides.append(f"--{name}={value}")
        valid &= value >= _INT_FLAGS[name]
    for name in draw(st.lists(st.sampled_from(sorted(_CHOICES)), max_size=2, unique=True)):
        value = draw(st.one_of(st.sampled_from(_CHOICES[name]), _TEXT))
        overrides.append(f"--{name}={value}")
        valid &= value in _CHOICES[name]
    if draw(st.booleans()):
        entries = draw(st.lists(st.one_of(st.integers(-3, 40).map(str), _TEXT), min_size=0, max_size=4))
        overrides.append("--eval_iters=" + ",".join(entries))
        valid &= bool(entries) and all(e.strip().isdigit() and int(e) >= 1 for e in entries)
    if draw(st.booleans()):
        value = draw(st.one_of(st.floats(-1, 1, allow_nan=False), st.sampled_from(["nan", "inf", "-inf", "x"])))
        overrides.append(f"--learning_rate={value}")
        valid &= isinstance(value, float) and value > 0
    return overrides, valid


@settings(FUZZ, max_examples=300)
@given(flag_overrides())
def test_flag_values(case):
    overrides, valid = case
    _count("flags")
    with hard_limit(10, "parsing flags"):
        try:
            config = config_lib.load(_CONFIG, *overrides)
            iters = config_lib.eval_iters(config)
            steps = config_lib.total_steps(config, 1000)
        except (absl_flags.IllegalFlagValueError, ValueError) as e:
            assert not valid, (overrides, str(e))
            named = [o.split("=")[0] for o in overrides]
            assert any(n in str(e) for n in named), (overrides, str(e))
            return
    assert valid, overrides
    assert all(isinstance(i, int) and i >= 1 for i in iters) and steps >= 1
