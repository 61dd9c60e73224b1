"""Tests for dspn_tf.export: signatures, a clean-process reload, TF Serving layout, atomic versions."""

import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from dspn_tf import DSPN, FSEncoder, MLPDecoder, RNFSEncoder, export
from dspn_tf.image_encoders import ConvEncoder
from dspn_tf.models import ImageToSet, SetAutoEncoder

N, C, LATENT, TRAINED_ITERS = 6, 2, 8, 10
IMAGE, IMAGE_N, IMAGE_C = 16, 4, 3
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _set_model():
    model = SetAutoEncoder(DSPN(FSEncoder(dim=16, latent=LATENT), set_size=N, set_channels=C, iters=TRAINED_ITERS))
    model({"set": tf.zeros([1, N, C]), "mask": tf.ones([1, N])})
    return model


def _image_model(decoder=None):
    decoder = decoder or DSPN(
        RNFSEncoder(dim=16, latent=LATENT), set_size=IMAGE_N, set_channels=IMAGE_C, iters=TRAINED_ITERS
    )
    model = ImageToSet(ConvEncoder(LATENT, filters=(4, 4)), decoder)
    model(tf.zeros([1, IMAGE, IMAGE, 3]))
    return model


def _baseline_set_model():
    model = SetAutoEncoder(MLPDecoder(set_size=N, set_channels=C, dim=8), encoder=FSEncoder(dim=8, latent=LATENT))
    model({"set": tf.zeros([1, N, C]), "mask": tf.ones([1, N])})
    return model


def _set_inputs(batch, seed=0):
    rng = np.random.default_rng(seed)
    mask = (rng.random((batch, N)) < 0.7).astype(np.float32)
    return {"set": rng.random((batch, N, C), dtype=np.float32) * mask[..., None], "mask": mask}


def _images(batch, seed=0):
    return np.random.default_rng(seed).random((batch, IMAGE, IMAGE, 3), dtype=np.float32)


def _graph_reference(model, inputs, iters):
    """The in-process model run as a serving graph would be: traced with the signature's shapes.

    A graph traced for one batch size differs from the served graph by float
    rounding (~1e-7), which a near-tie in FSPool's sort can amplify to ~1e-3
    over 30 steps (docs/serving.md, "Served and in-process numbers"), so the
    SavedModel is compared with the model traced for any batch size and a
    tensor `iters`, as the signatures are.
    """
    specs = tf.nest.map_structure(lambda x: tf.TensorSpec([None, *np.shape(x)[1:]], tf.float32), inputs)
    run = tf.function(lambda x, it: model(x, iters=it), input_signature=[specs, tf.TensorSpec([], tf.int32)])
    return run(inputs, tf.constant(iters))


@pytest.fixture(scope="module")
def set_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = _set_model()
    path = export.export_model(model, str(tmp_path_factory.mktemp("set_export")), all_steps=True)
    return model, path


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = _image_model()
    return model, export.export_model(model, str(tmp_path_factory.mktemp("image_export")))


def _run(args, cwd=None):
    return subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


# A child process that cannot import dspn_tf: the guard makes `import dspn_tf`
# raise, `-I` drops the environment and user site, and cwd is elsewhere.
CHILD = textwrap.dedent("""
    import sys
    sys.modules["dspn_tf"] = None
    import numpy as np
    import tensorflow as tf
    try:
        import dspn_tf  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("dspn_tf is importable")
    set_dir, image_dir, inputs_path, out_path = sys.argv[1:]
    inputs = dict(np.load(inputs_path))
    sets, images = tf.saved_model.load(set_dir), tf.saved_model.load(image_dir)
    out = {}
    for batch in (1, 64):
        for iters in (10, 30):
            key = f"{batch}_{iters}"
            it = tf.constant(iters, tf.int32)
            r = sets.signatures["serving_default"](set=inputs[f"set_{batch}"], mask=inputs[f"mask_{batch}"], iters=it)
            out[f"sae_set_{key}"], out[f"sae_mask_{key}"] = r["set"].numpy(), r["mask"].numpy()
            r = images.signatures["serving_default"](image=inputs[f"image_{batch}"], iters=it)
            out[f"img_set_{key}"], out[f"img_mask_{key}"] = r["set"].numpy(), r["mask"].numpy()
    # The methods take `iters` as optional; the default is the trained value.
    out["sae_default"] = sets.serve(inputs["set_64"], inputs["mask_64"])["set"].numpy()
    out["decode"] = sets.signatures["decode"](z=inputs["z"], iters=tf.constant(30))["set"].numpy()
    out["encode"] = sets.signatures["encode"](set=inputs["set_64"], mask=inputs["mask_64"])["z"].numpy()
    np.savez(out_path, **out)
""")


def test_clean_process_reproduces_outputs(set_export, image_export, tmp_path):
    (set_model, set_dir), (image_model, image_dir) = set_export, image_export
    inputs = {"z": np.random.default_rng(3).normal(size=(64, LATENT)).astype(np.float32)}
    for batch in (1, 64):
        inputs.update({f"{k}_{batch}": v for k, v in _set_inputs(batch, seed=batch).items()})
        inputs[f"image_{batch}"] = _images(batch, seed=batch)
    np.savez(tmp_path / "inputs.npz", **inputs)
    (tmp_path / "child.py").write_text(CHILD)
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = _run(
        [
            sys.executable,
            "-I",
            str(tmp_path / "child.py"),
            set_dir,
            image_dir,
            str(tmp_path / "inputs.npz"),
            str(tmp_path / "out.npz"),
        ],
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")

    close = dict(rtol=1e-5, atol=1e-5)
    for batch in (1, 64):
        for iters in (10, 30):
            key = f"{batch}_{iters}"
            ref = _graph_reference(set_model, {"set": inputs[f"set_{batch}"], "mask": inputs[f"mask_{batch}"]}, iters)
            np.testing.assert_allclose(out[f"sae_set_{key}"], ref["sets"][-1], **close)
            np.testing.assert_allclose(out[f"sae_mask_{key}"], ref["masks"][-1], **close)
            ref = _graph_reference(image_model, inputs[f"image_{batch}"], iters)
            np.testing.assert_allclose(out[f"img_set_{key}"], ref["sets"][-1], **close)
            np.testing.assert_allclose(out[f"img_mask_{key}"], ref["masks"][-1], **close)
    ref = _graph_reference(set_model, {"set": inputs["set_64"], "mask": inputs["mask_64"]}, TRAINED_ITERS)
    np.testing.assert_allclose(out["sae_default"], ref["sets"][-1], **close)
    ref = _graph_reference(set_model.decoder, inputs["z"], 30)
    np.testing.assert_allclose(out["decode"], ref["sets"][-1], **close)
    np.testing.assert_allclose(out["encode"], set_model.encoder(inputs["set_64"], inputs["mask_64"]), **close)


def _signature_blocks(show_output):
    blocks = re.split(r"^signature_def\['([^']+)'\]:$", show_output, flags=re.M)
    return dict(zip(blocks[1::2], blocks[2::2]))


def _tensor_info(block, kind, name):
    match = re.search(rf"{kind}\['{name}'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", block)
    assert match, f"{kind} {name} missing in:\n{block}"
    return match.group(1), match.group(2)


def test_saved_model_cli_show_lists_documented_signatures(set_export):
    result = _run(["saved_model_cli", "show", "--all", "--dir", set_export[1]])
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = _signature_blocks(result.stdout)
    assert {"serving_default", "decode", "encode", "serving_all_steps", "decode_all_steps"} <= set(blocks)
    expected = {
        "serving_default": (
            {"set": f"(-1, {N}, {C})", "mask": f"(-1, {N})", "iters": "()"},
            {"set": f"(-1, {N}, {C})", "mask": f"(-1, {N})"},
        ),
        "decode": ({"z": f"(-1, {LATENT})", "iters": "()"}, {"set": f"(-1, {N}, {C})", "mask": f"(-1, {N})"}),
        "encode": ({"set": f"(-1, {N}, {C})", "mask": f"(-1, {N})"}, {"z": f"(-1, {LATENT})"}),
        "decode_all_steps": (
            {"z": f"(-1, {LATENT})", "iters": "()"},
            {"sets": f"(-1, -1, {N}, {C})", "masks": f"(-1, -1, {N})", "inner_losses": "(-1, -1)"},
        ),
    }
    for signature, (inputs, outputs) in expected.items():
        block = blocks[signature]
        assert len(re.findall(r"inputs\['", block)) == len(inputs), block
        assert len(re.findall(r"outputs\['", block)) == len(outputs), block
        for kind, specs in (("inputs", inputs), ("outputs", outputs)):
            for name, shape in specs.items():
                dtype = "DT_INT32" if name == "iters" else "DT_FLOAT"
                assert _tensor_info(block, kind, name) == (dtype, shape), (signature, name)


def test_saved_model_cli_run_serving_default(set_export, tmp_path):
    model, path = set_export
    inputs = _set_inputs(3)
    np.save(tmp_path / "set.npy", inputs["set"])
    np.save(tmp_path / "mask.npy", inputs["mask"])
    # `iters` is omitted: the TF1 session path (as TF Serving) uses the SignatureDef default.
    result = _run(
        [
            "saved_model_cli",
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"set={tmp_path / 'set.npy'};mask={tmp_path / 'mask.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ref = _graph_reference(model, inputs, TRAINED_ITERS)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "set.npy"), ref["sets"][-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "mask.npy"), ref["masks"][-1], rtol=1e-5, atol=1e-5)


def test_signature_defaults_iters_to_trained_value(set_export):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(set_export[1], "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    signatures = proto.meta_graphs[0].signature_def
    for name in ("serving_default", "decode", "serving_all_steps", "decode_all_steps"):
        assert list(signatures[name].defaults["iters"].int_val) == [TRAINED_ITERS], name
    assert not signatures["encode"].defaults


def test_wrong_shape_dtype_and_iters_are_rejected(set_export):
    loaded = tf.saved_model.load(set_export[1])
    serve = loaded.signatures["serving_default"]
    good = _set_inputs(2)
    iters = tf.constant(3)
    serve(**good, iters=iters)
    bad_calls = [
        dict(set=np.zeros((2, N + 1, C), np.float32), mask=np.ones((2, N + 1), np.float32)),  # Set size.
        dict(set=np.zeros((2, N, C + 1), np.float32), mask=good["mask"]),  # Features.
        dict(set=np.zeros((2, N), np.float32), mask=good["mask"]),  # Rank.
        # Tensors of another dtype are rejected (NumPy arrays are converted,
        # as for any tf.function; TF Serving converts JSON to the signature dtype).
        dict(set=tf.constant(good["set"], tf.float64), mask=good["mask"]),
        dict(set=good["set"], mask=tf.ones((2, N), tf.int32)),
    ]
    for call in bad_calls:
        with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
            serve(**call, iters=iters)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        loaded.signatures["decode"](z=np.zeros((2, LATENT + 1), np.float32), iters=iters)
    with pytest.raises((TypeError, ValueError)):
        serve(**good, iters=tf.constant([3, 4]))  # `iters` is a scalar.
    for out_of_range in (-1, 101):  # 0 is allowed: the starting set (tests/test_serving_bad_requests.py).
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(**good, iters=tf.constant(out_of_range))


def test_runtime_shape_checks_are_in_the_graph(set_export):
    # TF Serving feeds placeholders without checking shapes, so the graph
    # must check them itself (EnsureShape), and must hold no Python calls.
    ops = export.graph_op_types(set_export[1])
    assert "EnsureShape" in ops
    assert "While" in ops or "StatelessWhile" in ops
    assert not ops & export.PYTHON_OPS


def test_non_finite_inputs_give_nan_rows_only(set_export, image_export):
    serve = tf.saved_model.load(set_export[1]).signatures["serving_default"]
    inputs = _set_inputs(4)
    clean = serve(**inputs, iters=tf.constant(5))
    inputs["set"][1, 0, 0] = np.nan
    inputs["mask"][2, 3] = np.inf
    out = serve(**inputs, iters=tf.constant(5))
    for key in ("set", "mask"):
        assert np.isnan(out[key][1]).all() and np.isnan(out[key][2]).all()
        np.testing.assert_array_equal(out[key].numpy()[[0, 3]], clean[key].numpy()[[0, 3]])

    serve = tf.saved_model.load(image_export[1]).signatures["serving_default"]
    images = _images(3)
    clean = serve(image=images, iters=tf.constant(5))
    images[0, 5, 5, 1] = np.nan
    out = serve(image=images, iters=tf.constant(5))
    assert np.isnan(out["set"][0]).all() and np.isnan(out["mask"][0]).all()
    np.testing.assert_array_equal(out["set"].numpy()[1:], clean["set"].numpy()[1:])


def test_all_steps_signatures_are_batch_major(set_export):
    model, path = set_export
    loaded = tf.saved_model.load(path)
    inputs = _set_inputs(3)
    out = loaded.signatures["serving_all_steps"](**inputs, iters=tf.constant(4))
    assert out["sets"].shape == (3, 5, N, C) and out["masks"].shape == (3, 5, N)
    assert out["inner_losses"].shape == (3, 4)
    ref = _graph_reference(model, inputs, 4)
    np.testing.assert_allclose(out["sets"], np.transpose(ref["sets"], [1, 0, 2, 3]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["inner_losses"], np.transpose(ref["inner_losses"]), rtol=1e-5, atol=1e-5)
    z = np.random.default_rng(1).normal(size=(2, LATENT)).astype(np.float32)
    out = loaded.signatures["decode_all_steps"](z=z, iters=tf.constant(1))
    assert out["sets"].shape == (2, 2, N, C) and out["inner_losses"].shape == (2, 1)


def test_keras_copy_beside_the_saved_model(set_export):
    model, path = set_export
    assert os.path.isfile(os.path.join(path, "assets.extra", "model.keras"))
    restored = export.load_keras_model(path)
    inputs = _set_inputs(2)
    np.testing.assert_allclose(restored(inputs, iters=3)["sets"], model(inputs, iters=3)["sets"], atol=1e-6)


def test_baseline_decoders(tmp_path):
    model = _baseline_set_model()
    loaded = tf.saved_model.load(export.export_model(model, str(tmp_path / "sae"), save_keras=False))
    assert set(loaded.signatures) == {"serving_default", "decode", "encode"}
    inputs = _set_inputs(2)
    out = loaded.signatures["serving_default"](**inputs)  # One-shot: no `iters` input.
    np.testing.assert_allclose(out["set"], model(inputs)["sets"][-1], rtol=1e-5, atol=1e-5)

    model = _image_model(MLPDecoder(set_size=IMAGE_N, set_channels=IMAGE_C, dim=8))
    loaded = tf.saved_model.load(export.export_model(model, str(tmp_path / "img"), save_keras=False))
    # An image model with a baseline decoder has no set encoder to export.
    assert set(loaded.signatures) == {"serving_default", "decode"}


def _fake_partial_save(real_save):
    def save(obj, export_dir, *args, **kwargs):
        os.makedirs(os.path.join(export_dir, "variables"))
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as f:
            f.write(b"half a graph")
        raise RuntimeError("simulated crash mid-export")

    return save


def test_interrupted_export_leaves_no_version(tmp_path, monkeypatch):
    model, base = _baseline_set_model(), str(tmp_path)
    assert export.export_model(model, base, save_keras=False) == os.path.join(base, "1")
    with monkeypatch.context() as patch:
        patch.setattr(tf.saved_model, "save", _fake_partial_save(tf.saved_model.save))
        with pytest.raises(RuntimeError, match="simulated crash"):
            export.export_model(model, base, save_keras=False)
    assert os.listdir(base) == ["1"]
    assert export.export_model(model, base, save_keras=False) == os.path.join(base, "2")


def test_leftovers_of_a_dead_exporter_are_invisible_then_removed(tmp_path):
    # A hard kill (no Python cleanup) leaves the hidden temp dir behind.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".tmp-1-{dead.pid}"
    (leftover / "variables").mkdir(parents=True)
    (leftover / "saved_model.pb").write_bytes(b"half a graph")
    assert export.list_versions(str(tmp_path)) == []
    assert export.export_model(_baseline_set_model(), str(tmp_path), save_keras=False).endswith(os.sep + "1")
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_versions_increase_and_keep_prunes_the_oldest(tmp_path):
    model, base = _baseline_set_model(), str(tmp_path)
    os.makedirs(os.path.join(base, "7"))  # Versions continue after the largest existing one.
    os.makedirs(os.path.join(base, "keras"))  # Non-integer names are ignored.
    for _ in range(3):
        export.export_model(model, base, keep=2, save_keras=False)
    assert export.list_versions(base) == [9, 10]
    assert sorted(os.listdir(base)) == ["10", "9", "keras"]
    assert os.path.isfile(os.path.join(base, "10", "saved_model.pb"))


def test_invalid_arguments():
    model = _baseline_set_model()
    with pytest.raises(ValueError, match="keep"):
        export.export_model(model, "unused", keep=0)
    with pytest.raises(ValueError, match="build"):
        export.ServingModule(SetAutoEncoder(DSPN(FSEncoder(dim=4, latent=4), set_size=3, set_channels=2)))
    with pytest.raises(ValueError, match="max_iters"):
        export.ServingModule(_set_model(), max_iters=5)
    with pytest.raises(ValueError, match="SetAutoEncoder or ImageToSet"):
        export.ServingModule(model.encoder)


def test_train_export_entry_point_restores_the_checkpoint(tmp_path):
    from absl import flags

    from train import checkpoints
    from train import config as config_lib
    from train import export as export_main

    FLAGS = flags.FLAGS
    argv = [
        "export",
        "--dataset=set_mnist",
        "--decoder=mlp",
        "--dim=8",
        "--latent=4",
        f"--model_dir={tmp_path}",
        "--noexport_keras",
    ]
    FLAGS.unparse_flags()
    try:
        # Every entry point defines every flag (train/flags.py), so a training flagfile parses here.
        assert FLAGS(argv) == ["export"]
        model = config_lib.build_model(config_lib.from_flags())
        checkpoint = tf.train.Checkpoint(model=model, optimizer=keras.optimizers.Adam(), step=tf.Variable(3))
        tf.train.CheckpointManager(checkpoint, str(tmp_path / "checkpoints"), max_to_keep=1).save()
        export_main.main([])
        FLAGS.latent = 5
        with pytest.raises((AssertionError, ValueError)):  # A config that does not match the checkpoint.
            checkpoints.restore(
                {"model": config_lib.build_model(config_lib.from_flags())}, str(tmp_path / "checkpoints")
            )
    finally:
        FLAGS.unparse_flags()
    loaded = tf.saved_model.load(str(tmp_path / "export" / "1"))
    inputs = {
        "set": np.random.default_rng(0).random((2, 342, 2), dtype=np.float32),
        "mask": np.ones((2, 342), np.float32),
    }
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](**inputs)["set"], model(inputs)["sets"][-1], rtol=1e-5, atol=1e-5
    )
