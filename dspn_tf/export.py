"""SavedModel export for TF applications and TF Serving.

`export_model(model, export_base)` writes `<export_base>/<version>/` in TF
Serving's layout (`saved_model.pb`, `variables/`) with named signatures:

- `serving_default`: the model's natural input (`image` for `ImageToSet`;
  `set` + `mask` for `SetAutoEncoder`) → final-step `set`, `mask`.
- `decode`: `z` → final-step `set`, `mask`.
- `encode`: `set`, `mask` → `z` (absent for `ImageToSet` with a baseline
  decoder: it has no set encoder).
- with `all_steps=True` also `serving_all_steps` and `decode_all_steps`
  returning every step batch-major: `sets` `[batch, iters + 1, N, C]`,
  `masks` `[batch, iters + 1, N]`, `inner_losses` `[batch, iters]`.

Sets go in and come out in the data's units: a model with set normalisation
(`normalize_sets=True`, `dspn_tf.models`) normalises its set inputs inside
(`serving_default` of a `SetAutoEncoder`, `encode`) and denormalises every
returned set; its statistics are variables of the SavedModel.

With a `DSPN` decoder every decoding signature has an int32 scalar input
`iters` whose SignatureDef default is the trained value; the inner loop is a
graph `while_loop`, so any count in `[0, max_iters]` works without re-export
(0: the starting set).
Baseline decoders have no inner loop and no `iters` input.

Non-finite inputs: a sample whose inputs contain NaN or Inf gets all-NaN
outputs; the other samples of the batch are computed normally. Nothing is
raised, so one bad request never fails the requests TF Serving batches with
it. A sample whose outputs overflow (any non-finite output value) also gets
all-NaN outputs, so every sample's outputs are either all finite or all NaN.
Huge finite inputs (1e30) are decoded normally (tested). A batch of 0 gives
empty outputs.

`iters = 0` returns the starting set and mask (step 0, no inner step; the
all-steps signatures return one step and empty `inner_losses` `[batch, 0]`).
Wrong shapes, ranks and `iters` outside `[0, max_iters]` fail with
`InvalidArgument`, a wrong dtype is refused by the signature; the loaded
model keeps serving after any of these.

Versions are written atomically: into a hidden `.tmp-<version>-<pid>`
directory in `export_base` (not an integer, so TF Serving ignores it), then
renamed to `<version>`. The Keras model goes inside the version, in
`<version>/assets.extra/model.keras`, the SavedModel directory for files that
travel with a model but are not part of it, so it is versioned, written and
pruned together with the SavedModel. A write that fails on a full disk
(ENOSPC) removes the partial version and raises `DiskFullError` naming where.
"""

import errno
import os
import re
import shutil
import types

import keras
import tensorflow as tf

from dspn_tf.models import is_set_model

KERAS_FILENAME = os.path.join("assets.extra", "model.keras")
_HIDDEN = re.compile(r"^\.(?:tmp|del)-(\d+)-(\d+)$")
# Ops that call back into Python; a servable graph must not contain them.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


class DiskFullError(OSError):
    """An export version could not be written because the disk is full; earlier versions are untouched."""


def _is_disk_full(error):
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    return isinstance(error, (OSError, tf.errors.OpError)) and "No space left on device" in str(error)


class ServingModule(tf.Module):
    """A `tf.Module` holding a built model and its serving functions.

    The functions are attributes, so after `tf.saved_model.load` they are
    callable as methods with `iters` optional (e.g. `loaded.decode(z)`);
    `signatures()` gives the same functions for `tf.saved_model.save`.

    Args:
        model: A built `SetAutoEncoder` or `ImageToSet`.
        image_size: `(height, width)` of `ImageToSet` inputs. Defaults to
            the size the model was built with.
        max_iters: Largest `iters` a request may ask for; values outside
            `[0, max_iters]` fail with `InvalidArgument` (a bound on the work
            one request can cause). `iters = 0` returns the starting set and
            mask unchanged (the decoder's step 0).
        all_steps: Also make `serving_all_steps` and `decode_all_steps`.
    """

    def __init__(self, model, *, image_size=None, max_iters=100, all_steps=False):
        super().__init__(name="dspn_serving")
        if not is_set_model(model):
            raise ValueError(
                f"ServingModule: `model` must be a SetAutoEncoder or ImageToSet; received {type(model).__name__}."
            )
        if not model.built:
            raise ValueError("ServingModule: build the model first (call it once or restore into a built model).")
        if not isinstance(max_iters, int) or max_iters < 1:
            raise ValueError(f"ServingModule: `max_iters` must be an integer >= 1; received max_iters={max_iters!r}.")
        # The model is kept out of the object graph: a tracked Keras model
        # would drag its own traced `serving_default` into the SavedModel.
        # Only its variables are tracked, which is all the functions need.
        self._holder = _Untracked(model)
        self.model_variables = [v.value for v in model.variables]
        decoder = model.decoder
        self.iterative = model.iterative
        self.set_size = decoder.set_size
        self.set_channels = decoder.set_channels
        self.latent = decoder.latent
        self.trained_iters = decoder.iters if self.iterative else None
        if self.iterative and self.trained_iters > max_iters:
            raise ValueError(f"ServingModule: max_iters={max_iters} is below the trained iters={self.trained_iters}.")
        self.max_iters = max_iters
        if self.latent is None:
            raise ValueError("ServingModule: the decoder is not built; call the model once first.")

        set_spec = tf.TensorSpec([None, self.set_size, self.set_channels], tf.float32, name="set")
        mask_spec = tf.TensorSpec([None, self.set_size], tf.float32, name="mask")
        z_spec = tf.TensorSpec([None, self.latent], tf.float32, name="z")
        self.input_specs = model.input_signature(image_size)

        self.serve = self._decoding_function(self._encode_input, self.input_specs, final_step=True)
        self.decode = self._decoding_function(_identity_z, [z_spec], final_step=True)
        if all_steps:
            self.serve_all_steps = self._decoding_function(self._encode_input, self.input_specs, final_step=False)
            self.decode_all_steps = self._decoding_function(_identity_z, [z_spec], final_step=False)
        set_encoder, to_model_units = model.set_encoder, model.to_model_units
        if set_encoder is not None:

            @tf.function(input_signature=[set_spec, mask_spec])
            def encode(set, mask):  # noqa: A002 -- the argument name is the signature's input name.
                set, mask = _check_input(set, set_spec), _check_input(mask, mask_spec)
                z = set_encoder(to_model_units(set, mask), mask, training=False)  # Shape: [batch, latent].
                return _all_or_nothing({"z": z}, _bad_rows([set, mask]))

            self.encode = encode

    @property
    def model(self):
        return self._holder.value

    def signatures(self):
        """`{signature name: tf.function}` for `tf.saved_model.save(..., signatures=...)`."""
        names = {
            "serving_default": "serve",
            "decode": "decode",
            "encode": "encode",
            "serving_all_steps": "serve_all_steps",
            "decode_all_steps": "decode_all_steps",
        }
        return {key: getattr(self, attr) for key, attr in names.items() if hasattr(self, attr)}

    def _encode_input(self, *inputs):
        return self.model.embed(*inputs, training=False)

    def _decoding_function(self, to_z, specs, final_step):
        """A tf.function `(*specs[, iters]) → outputs`; `iters` defaults to the trained value."""
        decoder, to_original_units = self.model.decoder, self.model.to_original_units
        names = [spec.name for spec in specs]

        def run(inputs, iters):
            inputs = [_check_input(x, spec) for x, spec in zip(inputs, specs)]
            bad = _bad_rows(inputs)  # Shape: [batch].
            # A one-shot baseline has no `iters` (its only step); iters = 0 returns the starting set.
            out = decoder(to_z(*inputs), iters=iters, training=False)
            # Shape: [T + 1, batch, N, C], [T + 1, batch, N]; sets in the data's units (undoes a normalisation).
            sets, masks = to_original_units(out["sets"]), out["masks"]
            if final_step:
                return _all_or_nothing({"set": sets[-1], "mask": masks[-1]}, bad)  # [batch, N, C], [batch, N].
            losses = out["inner_losses"]  # Shape: [T, batch].
            # Batch-major, because TF Serving's REST API splits outputs along axis 0.
            outputs = {
                "sets": tf.transpose(sets, [1, 0, 2, 3]),  # Shape: [batch, T + 1, N, C].
                "masks": tf.transpose(masks, [1, 0, 2]),  # Shape: [batch, T + 1, N].
                "inner_losses": tf.transpose(losses),  # Shape: [batch, T].
            }
            return _all_or_nothing(outputs, bad)

        if not self.iterative:
            # Signature input names are the Python argument names, so each
            # arity gets its own function with the documented names.
            if names == ["set", "mask"]:
                fn = lambda set, mask: run([set, mask], None)  # noqa: A002, E731
            else:
                fn = _single_input(names[0], lambda x: run([x], None))
            return tf.function(fn, input_signature=specs)

        iters_spec = tf.TensorSpec([], tf.int32, name="iters")
        # A tensor default becomes the SignatureDef's `defaults` entry and a
        # PlaceholderWithDefault, so clients may omit `iters` where the
        # runtime honours signature defaults.
        default = tf.constant(self.trained_iters, tf.int32)
        max_iters = self.max_iters

        def checked(iters):
            iters = tf.ensure_shape(iters, [])
            in_range = tf.logical_and(iters >= 0, iters <= max_iters)
            check = tf.debugging.Assert(
                in_range, ["`iters` must be in [0, max_iters]; max_iters, iters:", max_iters, iters]
            )
            with tf.control_dependencies([check]):
                return tf.identity(iters)

        if names == ["set", "mask"]:

            def fn(set, mask, iters=default):  # noqa: A002
                return run([set, mask], checked(iters))

        else:
            fn = _single_input(names[0], lambda x, iters: run([x], checked(iters)), default)
        return tf.function(fn, input_signature=[*specs, iters_spec])


class _Untracked:
    """A plain holder, invisible to TF object tracking."""

    def __init__(self, value):
        self.value = value


def _identity_z(z):
    return z


def _single_input(name, body, default=None):
    """A function whose first argument is literally called `name` (a signature input name)."""
    if not name.isidentifier():
        raise ValueError(f"Unexpected signature input {name!r}: it must be a Python identifier.")

    def one(x):
        return body(x)

    def with_iters(x, iters=default):
        return body(x, iters)

    fn = one if default is None else with_iters
    # Rename the first parameter: the exported signature's input takes its name.
    code = fn.__code__.replace(co_varnames=(name, *fn.__code__.co_varnames[1:]))
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _check_input(x, spec):
    # EnsureShape runs in the graph, so a wrong shape is rejected even where
    # a runtime feeds the placeholders without checking (TF Serving does).
    return tf.ensure_shape(x, spec.shape)


def _bad_rows(inputs):
    """`[batch]` bool: True where any input value of the sample is NaN or Inf."""
    bad = None
    for x in inputs:
        row = tf.logical_not(tf.reduce_all(tf.math.is_finite(x), axis=list(range(1, x.shape.rank))))
        bad = row if bad is None else tf.logical_or(bad, row)
    return bad


def _all_or_nothing(outputs, bad):
    """Every output row of a sample in `bad`, or with any non-finite output value (an overflow), becomes NaN.

    So each sample's outputs are either all finite or all NaN, whatever its inputs.
    """
    bad = tf.logical_or(bad, _bad_rows(list(outputs.values())))
    return {name: _nan_rows(x, bad) for name, x in outputs.items()}


def _nan_rows(x, bad):
    bad = tf.reshape(bad, [-1] + [1] * (x.shape.rank - 1))
    return tf.where(bad, tf.constant(float("nan"), x.dtype), x)


def list_versions(export_base):
    """Sorted integer version numbers present in `export_base` (the ones TF Serving sees)."""
    if not os.path.isdir(export_base):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_base)
        if name.isdigit() and os.path.isdir(os.path.join(export_base, name))
    )


def export_model(model, export_base, *, keep=None, all_steps=False, save_keras=True, image_size=None, max_iters=100):
    """Exports `model` as the next version under `export_base`; returns the version directory.

    Args:
        model: A built `SetAutoEncoder` or `ImageToSet` (weights restored).
        export_base: TF Serving's model base path; created if missing.
        keep: Keep only the newest `keep` versions (this one included);
            None keeps all.
        all_steps: Also export `serving_all_steps` and `decode_all_steps`.
        save_keras: Also write `<version>/assets.extra/model.keras`.
        image_size: `(height, width)` for `ImageToSet`; defaults to the
            size the model was built with.
        max_iters: Largest `iters` a request may ask for.

    Returns:
        The path of the new `<export_base>/<version>` directory.
    """
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"export_model: `keep` must be None or an integer >= 1; received keep={keep!r}.")
    module = ServingModule(model, image_size=image_size, max_iters=max_iters, all_steps=all_steps)
    os.makedirs(export_base, exist_ok=True)
    _remove_leftovers(export_base)
    while True:
        version = max(list_versions(export_base), default=0) + 1
        tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
        try:
            tf.saved_model.save(module, tmp, signatures=module.signatures())
            if save_keras:
                os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
                model.save(os.path.join(tmp, KERAS_FILENAME))
            _check_no_python_ops(tmp)
            final = os.path.join(export_base, str(version))
            try:
                # Atomic on POSIX; fails rather than overwrite a version that
                # a concurrent exporter created meanwhile.
                os.rename(tmp, final)
            except OSError:
                if os.path.exists(final):
                    shutil.rmtree(tmp, ignore_errors=True)
                    continue
                raise
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if _is_disk_full(e):
                raise DiskFullError(
                    errno.ENOSPC,
                    f"export_model: no space left on the device while writing version {version} to {tmp}; "
                    f"the partial version was removed and the existing versions of {export_base} "
                    f"({list_versions(export_base) or 'none'}) are untouched. Free space and export again. ({e})",
                ) from e
            raise
        break
    if keep is not None:
        for old in list_versions(export_base)[:-keep]:
            _remove_version(export_base, old)
    return final


def _remove_version(export_base, version):
    # Rename first so TF Serving never sees a half-deleted version.
    trash = os.path.join(export_base, f".del-{version}-{os.getpid()}")
    os.rename(os.path.join(export_base, str(version)), trash)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(export_base):
    """Deletes hidden temp dirs left by exporters that died (their pid is gone)."""
    for name in os.listdir(export_base):
        match = _HIDDEN.match(name)
        if match and not pid_alive(int(match.group(2))):
            shutil.rmtree(os.path.join(export_base, name), ignore_errors=True)


def pid_alive(pid):
    """Whether a process with this pid exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def graph_op_types(saved_model_dir):
    """Every op type in a SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def _check_no_python_ops(saved_model_dir):
    found = graph_op_types(saved_model_dir) & PYTHON_OPS
    if found:
        raise ValueError(f"export_model: the serving graph calls Python ({sorted(found)}); it cannot be served.")


def load_keras_model(version_dir):
    """Loads the `.keras` copy of an exported version (needs `dspn_tf` importable)."""
    import dspn_tf.models  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import -- registers the classes.

    return keras.saving.load_model(os.path.join(version_dir, KERAS_FILENAME))
