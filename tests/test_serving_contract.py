"""The client contract of an export: TF Serving `PredictRequest`s and the README's REST examples.

No model server runs here. The requests are built with the official
`tensorflow-serving-api` protos from the contract as the README's Signatures table
states it, checked against the SavedModel's SignatureDefs (what TF Serving reads) and
then fed, tensor by tensor, to the loaded SavedModel in-process. The README's REST
bodies are decoded as TF Serving's columnar "inputs" format would be and run the same
way; the responses are re-encoded as TF Serving's JSON and compared in structure with
the README's (the README's numbers come from other weights).
"""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2  # In the test extra (setup.cfg): CI fails here, never skips.

from dspn_tf import export
from dspn_tf.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, C, LATENT, IMAGE = 3, 2, 4, 16  # The README's example model: N = 3, C = 2, latent 4.
FLOAT, INT = tf.float32.as_datatype_enum, tf.int32.as_datatype_enum


def set_inputs():
    return {"set": (FLOAT, [-1, N, C]), "mask": (FLOAT, [-1, N])}


def final_outputs():
    return {"set": (FLOAT, [-1, N, C]), "mask": (FLOAT, [-1, N])}


def all_steps_outputs():
    # [batch, step, ...] with a dynamic step count (iters is a request input).
    return {"sets": (FLOAT, [-1, -1, N, C]), "masks": (FLOAT, [-1, -1, N]), "inner_losses": (FLOAT, [-1, -1])}


# The README's Signatures table, per exported model: signature -> (inputs, outputs),
# each name -> (dtype enum, shape with -1 for dynamic dimensions).
CONTRACTS = {
    "dspn_set": {
        "serving_default": ({**set_inputs(), "iters": (INT, [])}, final_outputs()),
        "decode": ({"z": (FLOAT, [-1, LATENT]), "iters": (INT, [])}, final_outputs()),
        "encode": (set_inputs(), {"z": (FLOAT, [-1, LATENT])}),
        "serving_all_steps": ({**set_inputs(), "iters": (INT, [])}, all_steps_outputs()),
        "decode_all_steps": ({"z": (FLOAT, [-1, LATENT]), "iters": (INT, [])}, all_steps_outputs()),
    },
    "dspn_image": {
        "serving_default": ({"image": (FLOAT, [-1, IMAGE, IMAGE, 3]), "iters": (INT, [])}, final_outputs()),
        "decode": ({"z": (FLOAT, [-1, LATENT]), "iters": (INT, [])}, final_outputs()),
        "encode": (set_inputs(), {"z": (FLOAT, [-1, LATENT])}),
    },
    "mlp_set": {  # A one-shot baseline: no inner loop, no iters.
        "serving_default": (set_inputs(), final_outputs()),
        "decode": ({"z": (FLOAT, [-1, LATENT])}, final_outputs()),
        "encode": (set_inputs(), {"z": (FLOAT, [-1, LATENT])}),
    },
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    models = {
        "dspn_set": (
            build_model("autoencoder", set_size=N, set_channels=C, dim=8, latent=LATENT, input_shape=(N, C)),
            True,
        ),
        "dspn_image": (
            build_model("image", set_size=N, set_channels=C, dim=8, latent=LATENT, input_shape=(IMAGE, IMAGE, 3)),
            False,
        ),
        "mlp_set": (
            build_model(
                "autoencoder", decoder="mlp", set_size=N, set_channels=C, dim=8, latent=LATENT, input_shape=(N, C)
            ),
            False,
        ),
    }
    return {
        name: export.export_model(model, str(base / name), all_steps=all_steps, save_keras=False)
        for name, (model, all_steps) in models.items()
    }


def signature_defs(version_dir):
    """The SignatureDefs of the `serve` MetaGraph, as TF Serving reads them from saved_model.pb."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    (graph,) = [g for g in saved_model.meta_graphs if "serve" in g.meta_info_def.tags]
    # `__saved_model_init_op` is TensorFlow's own (it runs the initialisers); not a signature to call.
    return {name: sig for name, sig in graph.signature_def.items() if name != "__saved_model_init_op"}


def shape_of(info):
    return [d.size for d in info.tensor_shape.dim]


def example_value(name, dtype, shape, batch, rng):
    if dtype == INT:
        return np.int32(4)  # iters
    dims = [batch if d == -1 else d for d in shape]
    if name == "mask":
        return np.ones(dims, np.float32)
    return rng.random(dims, dtype=np.float32)


def predict_request(signature_name, inputs, batch, rng):
    """A `PredictRequest` for `signature_name` built from the contract's inputs."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "dspn"
    request.model_spec.signature_name = signature_name
    for name, (dtype, shape) in inputs.items():
        value = example_value(name, dtype, shape, batch, rng)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=tf.as_dtype(dtype)))
    return request


def compatible(concrete, declared):
    return len(concrete) == len(declared) and all(d in (-1, c) for c, d in zip(concrete, declared))


@pytest.mark.parametrize("model_name", sorted(CONTRACTS))
def test_predict_requests_match_the_signature_defs_and_run(exports, model_name, rng):
    version_dir = exports[model_name]
    defs = signature_defs(version_dir)
    contract = CONTRACTS[model_name]
    assert set(defs) == set(contract)  # Every exported signature is in the contract, and only those.
    loaded = tf.saved_model.load(version_dir)
    for signature_name, (inputs, outputs) in contract.items():
        sig = defs[signature_name]
        assert {k: (v.dtype, shape_of(v)) for k, v in sig.inputs.items()} == {
            k: (d, s) for k, (d, s) in inputs.items()
        }, signature_name
        assert {k: (v.dtype, shape_of(v)) for k, v in sig.outputs.items()} == {
            k: (d, s) for k, (d, s) in outputs.items()
        }, signature_name
        request = predict_pb2.PredictRequest.FromString(
            predict_request(signature_name, inputs, 2, rng).SerializeToString()  # Over the wire and back.
        )
        assert request.model_spec.signature_name == signature_name
        assert set(request.inputs) == set(sig.inputs)
        for name, proto in request.inputs.items():
            assert proto.dtype == sig.inputs[name].dtype, (signature_name, name)
            assert compatible([d.size for d in proto.tensor_shape.dim], shape_of(sig.inputs[name]))
        # What the server does with it: tensors by input name into the signature.
        feed = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        result = loaded.signatures[signature_name](**feed)
        assert set(result) == set(sig.outputs)
        for name, value in result.items():
            assert value.dtype.as_datatype_enum == sig.outputs[name].dtype
            assert compatible(value.shape.as_list(), shape_of(sig.outputs[name])), (signature_name, name)
            assert value.shape[0] == 2  # Batch-major: REST splits outputs along axis 0.


def readme_rest_examples():
    """(request, response) pairs of JSON bodies from the README's TF Serving section."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("### TF Serving") :]
    curl = re.search(r"curl -d '(.*?)'", section, flags=re.DOTALL).group(1)
    blocks = re.findall(r"^```json\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    pairs = [(json.loads(curl), json.loads(blocks[0]))]
    bodies = [json.loads(line) for line in blocks[1].splitlines() if line.strip()]
    pairs += list(zip(bodies[::2], bodies[1::2]))
    return pairs


def decode_columnar(inputs, sig):
    """TF Serving's REST decoding of `{"inputs": {...}}`: every named input, cast to its signature dtype."""
    assert set(inputs) == set(sig.inputs), "TF Serving's REST API needs every named input"
    tensors = {}
    for name, value in inputs.items():
        array = np.asarray(value, dtype=tf.as_dtype(sig.inputs[name].dtype).as_numpy_dtype)
        assert compatible(list(array.shape), shape_of(sig.inputs[name])), name
        tensors[name] = tf.constant(array)
    return tensors


def encode_columnar(result):
    """TF Serving's REST response in the columnar format: one unnamed output is returned bare."""
    outputs = {name: value.numpy().tolist() for name, value in result.items()}
    return json.loads(json.dumps({"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}))


def structure(value):
    """Nested list shape and dict keys, without the numbers."""
    if isinstance(value, dict):
        return {k: structure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [len(value), structure(value[0])] if value else [0]
    return type(value).__name__


def test_readme_rest_examples_are_what_the_signatures_accept(exports):
    examples = readme_rest_examples()
    assert [request["signature_name"] for request, _ in examples] == ["serving_default", "decode", "encode"]
    version_dir = exports["dspn_set"]
    defs = signature_defs(version_dir)
    loaded = tf.saved_model.load(version_dir)
    for request, expected in examples:
        assert "instances" not in request  # The row format would batch the scalar iters.
        name = request["signature_name"]
        response = encode_columnar(loaded.signatures[name](**decode_columnar(request["inputs"], defs[name])))
        assert structure(response) == structure(expected), name
        values = np.asarray(response["outputs"]["set"] if name != "encode" else response["outputs"])
        assert np.all(np.isfinite(values))


def test_a_request_missing_iters_or_with_a_wrong_shape_is_refused_by_the_contract(exports):
    defs = signature_defs(exports["dspn_set"])
    with pytest.raises(AssertionError, match="every named input"):
        decode_columnar(
            {"set": [[[0.1, 0.2], [0.5, 0.5], [0.0, 0.0]]], "mask": [[1.0, 1.0, 0.0]]}, defs["serving_default"]
        )
    with pytest.raises(AssertionError):
        decode_columnar({"z": [[0.5, -0.25, 1.0]], "iters": 10}, defs["decode"])  # latent 3, not 4
