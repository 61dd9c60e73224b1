"""Set-MNIST reader on tiny IDX fixtures written by the tests."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dspn_tf.data import set_mnist


def _images():
    """Three 28x28 digits with known pixels, including the 33/34 boundary."""
    images = np.zeros([3, 28, 28], np.uint8)
    images[0, 0, 0] = 34  # Kept: exactly the threshold.
    images[0, 0, 1] = 33  # Dropped: one below.
    images[0, 27, 27] = 255
    images[0, 5, 20] = 200
    images[1, 13, 2] = 100
    images[2, :10, :10] = 255  # 100 elements.
    return images


def _write_idx(path, array, magic, *, gz):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path + ".gz", "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def _fixture(folder, *, gz, images=None):
    images = _images() if images is None else images
    os.makedirs(folder, exist_ok=True)
    _write_idx(os.path.join(folder, "train-images-idx3-ubyte"), images, 2051, gz=gz)
    _write_idx(os.path.join(folder, "train-labels-idx1-ubyte"), np.arange(len(images)), 2049, gz=gz)
    return str(folder)


def _sorted_elements(example):
    n = int(example["mask"].sum())
    elements = example["set"][:n]
    return elements[np.lexsort((elements[:, 1], elements[:, 0]))]


@pytest.mark.parametrize("gz", [True, False])
def test_exact_coordinates_mask_and_padding(tmp_path, gz):
    source = _fixture(tmp_path / "mnist", gz=gz)
    ds = set_mnist.build_dataset(source, "train", shuffle_elements=False, include_label=True)
    examples = list(ds.as_numpy_iterator())
    assert len(examples) == 3
    first = examples[0]
    assert first["set"].shape == (342, 2) and first["set"].dtype == np.float32
    assert first["mask"].shape == (342,) and first["mask"].dtype == np.float32
    # Row-major order without shuffling; (row, col) / 27, channel 0 the row.
    # (0, 1) holds 33 and is dropped; (0, 0) holds 34 and is kept.
    expected = np.array([[0, 0], [5 / 27, 20 / 27], [1, 1]], np.float32)
    np.testing.assert_allclose(first["set"][:3], expected, rtol=1e-6)
    np.testing.assert_array_equal(first["mask"][:3], 1.0)
    np.testing.assert_array_equal(first["mask"][3:], 0.0)
    np.testing.assert_array_equal(first["set"][3:], 0.0)
    np.testing.assert_allclose(examples[1]["set"][0], [13 / 27, 2 / 27], rtol=1e-6)
    assert examples[1]["mask"].sum() == 1
    assert examples[2]["mask"].sum() == 100
    assert [e["label"] for e in examples] == [0, 1, 2]


def test_threshold_boundary(tmp_path):
    images = np.zeros([2, 28, 28], np.uint8)
    images[0, 3, 4] = 33
    images[1, 3, 4] = 34
    source = _fixture(tmp_path / "mnist", gz=False, images=images)
    masks = [e["mask"].sum() for e in set_mnist.build_dataset(source, "train").as_numpy_iterator()]
    assert masks == [0, 1]


def test_shuffle_differs_between_passes_with_same_content(tmp_path):
    source = _fixture(tmp_path / "mnist", gz=True)
    ds = set_mnist.build_dataset(source, "train", seed=3)
    first = list(ds.as_numpy_iterator())[2]
    second = list(ds.as_numpy_iterator())[2]
    assert not np.array_equal(first["set"], second["set"])
    np.testing.assert_array_equal(_sorted_elements(first), _sorted_elements(second))
    np.testing.assert_array_equal(first["mask"], second["mask"])
    # The padding stays at the end whatever the order.
    np.testing.assert_array_equal(first["set"][100:], 0.0)
    # Reproducible from the seed: a fresh dataset repeats the same passes.
    again = set_mnist.build_dataset(source, "train", seed=3)
    np.testing.assert_array_equal(list(again.as_numpy_iterator())[2]["set"], first["set"])


def test_bad_magic_names_the_file(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    _write_idx(str(folder / "train-images-idx3-ubyte"), _images(), 2049, gz=False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*magic.*2049"):
        set_mnist.build_dataset(str(folder), "train")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_names_the_file(tmp_path, gz):
    folder = tmp_path / "mnist"
    folder.mkdir()
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (3, 28, 28))
    data = header + bytes(28 * 28 * 3 - 10)
    path = str(folder / "train-images-idx3-ubyte")
    if gz:
        path += ".gz"
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        set_mnist.build_dataset(str(folder), "train")


def test_missing_file_and_oversized_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        set_mnist.build_dataset(_fixture(tmp_path / "a", gz=True), "test")
    source = _fixture(tmp_path / "b", gz=True)
    with pytest.raises(ValueError, match=r"image 2 has 100 pixels"):
        set_mnist.build_dataset(source, "train", max_set_size=50)


def test_tfds_source_with_mock_data():
    images = _images()

    def as_dataset(self, split, **kwargs):
        del self, split, kwargs
        return tf.data.Dataset.from_tensor_slices({"image": images[..., None], "label": np.arange(3, dtype=np.int64)})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        ds = set_mnist.build_dataset(
            "tfds", "train", shuffle_elements=False, include_label=True, data_dir="/nonexistent"
        )
        examples = list(ds.as_numpy_iterator())
    np.testing.assert_allclose(examples[0]["set"][:3], [[0, 0], [5 / 27, 20 / 27], [1, 1]], rtol=1e-6)
    assert [e["mask"].sum() for e in examples] == [3, 1, 100]
    assert examples[2]["label"] == 2
