"""A full disk while writing generated data or the image cache (issue 13): a named error, the previous state kept."""

import errno
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from dspn_tf.data import DiskFullError, clevr_states, image_cache, render


def _enospc(path):
    return OSError(errno.ENOSPC, "No space left on device", path)


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_generated_states_cache_on_a_full_disk(tmp_path, monkeypatch):
    cache = str(tmp_path / "states")
    good_state, good_mask = clevr_states.generated_states("val", num_scenes=4, seed=0, cache_dir=cache, workers=1)
    before = _files(cache)
    real_savez = np.savez

    def savez_until_full(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise _enospc(f.name if hasattr(f, "name") else cache)

    monkeypatch.setattr(clevr_states.np, "savez", savez_until_full)
    with pytest.raises(DiskFullError) as info:
        clevr_states.generated_states("train", num_scenes=6, seed=0, cache_dir=cache, workers=1)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert "No space left" in message and cache in message and "train" in message
    assert _files(cache) == before  # No partial file; the other cache untouched.
    monkeypatch.setattr(clevr_states.np, "savez", real_savez)
    state, mask = clevr_states.generated_states("val", num_scenes=4, seed=0, cache_dir=cache, workers=1)
    np.testing.assert_array_equal(state, good_state)
    np.testing.assert_array_equal(mask, good_mask)
    fresh, _ = clevr_states.generated_states("train", num_scenes=6, seed=0, cache_dir=cache, workers=1)
    assert fresh.shape == (6, 10, 18)


def test_image_cache_on_a_full_disk_keeps_the_older_entry(tmp_path, monkeypatch):
    cache, size = str(tmp_path / "images"), 4
    images = np.arange(5 * size * size * 3, dtype=np.uint8).reshape(5, size, size, 3)

    def make():
        return tf.data.Dataset.from_tensor_slices(images)

    names = [f"img{i}.png" for i in range(5)]
    common = dict(cache_dir=cache, prefix="train-4px-src-", image_size=size, expected_count=5)
    image_cache.cached_images(make, names, key="a" * 40, **common)  # The older version of the source.
    before = _files(cache)
    monkeypatch.setattr(image_cache, "SHARD_SIZE", 2)
    real_writer = tf.io.TFRecordWriter

    class FullDiskWriter:
        written = 0

        def __init__(self, path):
            self.path, self.inner = path, real_writer(path)

        def write(self, record):
            if FullDiskWriter.written == 3:  # Two shards in, a third started.
                raise tf.errors.UnknownError(None, None, f"{self.path}: No space left on device")
            FullDiskWriter.written += 1
            self.inner.write(record)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(image_cache.tf.io, "TFRecordWriter", FullDiskWriter)
    with pytest.raises(DiskFullError) as info:
        image_cache.cached_images(make, names, key="b" * 40, **common)
    assert info.value.errno == errno.ENOSPC and cache in str(info.value) and "image cache" in str(info.value)
    assert _files(cache) == before  # The temporary entry is gone and the older one was not pruned.
    monkeypatch.setattr(image_cache.tf.io, "TFRecordWriter", real_writer)
    cached, _ = image_cache.cached_images(make, names, key="b" * 40, **common)
    np.testing.assert_array_equal(np.stack(list(cached.as_numpy_iterator())), images)


def test_generated_scenes_on_a_full_disk_keep_the_existing_folder(tmp_path, monkeypatch):
    out = str(tmp_path / "gen")
    final = render.generate(out, num_train=2, num_val=1, seed=0, workers=1)
    with open(os.path.join(final, "scenes", "CLEVR_train_scenes.json")) as f:
        scenes = json.load(f)
    before = _files(out)

    def write_half(root, tasks, results, seed):
        with open(os.path.join(root, "scenes", "CLEVR_train_scenes.json"), "w") as f:
            f.write('{"info": {"split": "tr')
        raise _enospc(os.path.join(root, "scenes", "CLEVR_train_scenes.json"))

    monkeypatch.setattr(render, "_write_scene_files", write_half)
    with pytest.raises(DiskFullError) as info:
        render.generate(out, num_train=3, num_val=1, seed=1, workers=1, overwrite=True)
    assert info.value.errno == errno.ENOSPC and out in str(info.value) and "generated CLEVR scenes" in str(info.value)
    assert _files(out) == before  # No partial folder left; the previous scenes untouched.
    with open(os.path.join(final, "scenes", "CLEVR_train_scenes.json")) as f:
        assert json.load(f) == scenes


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(f, **arrays):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(clevr_states.np, "savez", denied)
    with pytest.raises(PermissionError):
        clevr_states.generated_states("train", num_scenes=2, seed=0, cache_dir=str(tmp_path), workers=1)
    assert _files(str(tmp_path)) == []
