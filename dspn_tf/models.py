"""Whole models: an input encoder followed by a set decoder.

`SetAutoEncoder` encodes a set and decodes it back (set-MNIST);
`ImageToSet` predicts a set from an image (CLEVR). With a `DSPN` decoder the
target-set encoder is the decoder's own encoder (weights shared, docs/algorithm.md §3).
Both return the decoder dict plus the embedding `z`.

Both also train with Keras' own loop: `compile(optimizer=...)`, then `fit`,
`evaluate` and `predict` on datasets of batch dicts, scored by the same
`dspn_tf.training` loss code as the custom loop (`SetModel`).

Set-feature normalisation (`normalize_sets=True`, off by default): the model
holds a `dspn_tf.scaling.SetScaling` (`set_scaling`) whose per-feature mean and
std `model.adapt(data)` learns from the training sets. The model then works in
normalised units: the decoder predicts normalised sets, a `SetAutoEncoder`
normalises its input set before encoding, and the losses compare normalised
predictions with normalised targets (`dspn_tf.batch_losses.per_sample_losses`,
used by `fit`, `evaluate` and the custom loop's `Trainer`). Everything the
model hands out is in the data's units: calling it (`model(x)`), `predict`,
every exported signature (`dspn_tf.export`) and so `dspn_tf.evaluation`. Only
the losses ask for normalised outputs, with `model(x, normalized=True)`;
`to_original_units` / `to_model_units` convert between the two. A model built
without it has no such layer, variable or config entry.
"""

import keras
import tensorflow as tf

from dspn_tf import checks
from dspn_tf import training as training_lib
from dspn_tf.dspn import DSPN
from dspn_tf.scaling import SetScaling


def _deserialize(obj):
    return keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj


class _LossMeans:
    """The per-sample loss means that `fit` and `evaluate` log.

    A plain holder, so neither Keras nor `tf.train.Checkpoint` tracks the metrics as
    model state: a built model accepts no new state, and the checkpoints of a compiled
    model stay those of the custom loop.
    """

    def __init__(self):
        self.trackers = tuple(keras.metrics.Mean(name=name) for name in ("loss", "set_loss", "repr_loss"))


class SetModel(keras.Model):
    """What `SetAutoEncoder` and `ImageToSet` share: Keras' `fit` / `evaluate` / `predict`.

    `train_step` is one update of `dspn_tf.training.loss_and_gradients`, the
    function the custom loop's `Trainer` applies, so both train alike; the
    batches are the dicts of the `dspn_tf.data` builders (inputs, target set
    under `loss_settings.set_key`, `mask`). Logs `loss`, `set_loss` and
    `repr_loss`, per-sample means over the epoch.

    With set normalisation (`normalize_sets=True` in the subclasses; module
    docstring) `adapt` learns the statistics, calling the model returns sets
    in the data's units, and `model(x, normalized=True)` in the model's own
    normalised units (what the losses score).

    Args:
        loss_settings: `dspn_tf.training.LossSettings` (or its `get_config`
            dict) used by `fit` and `evaluate`; `compile(loss_settings=...)`
            replaces it. Kept in `get_config` and `.keras` files.
        **kwargs: Further `keras.Model` arguments (`name`).
    """

    default_loss_settings = training_lib.LossSettings()
    # The `SetScaling` of a model built with normalize_sets=True (an attribute of those only).
    set_scaling = None

    def __init__(self, *, loss_settings=None, **kwargs):
        super().__init__(**kwargs)
        self.loss_settings = (
            self.default_loss_settings
            if loss_settings is None
            else training_lib.LossSettings.from_config(loss_settings)
        )

    def _add_set_scaling(self, normalize_sets):
        """Creates `set_scaling` (for `decoder.set_channels` features) if `normalize_sets`; call after `decoder`."""
        if not isinstance(normalize_sets, bool):
            raise ValueError(
                f"{type(self).__name__}: `normalize_sets` must be True or False; received {normalize_sets!r}."
            )
        if normalize_sets:
            self.set_scaling = SetScaling(self.decoder.set_channels, name="set_scaling")

    @property
    def normalizes_sets(self):
        """True if the model was built with `normalize_sets=True` (it works in normalised units)."""
        return self.set_scaling is not None

    def adapt(self, data, *, steps=None, set_key=None):
        """Learns the normalisation's per-feature mean and std from the target sets of `data`.

        Reads the target set under `set_key` and `mask` of each batch; only
        valid elements (mask not 0) count (`dspn_tf.scaling.feature_statistics`).

        Args:
            data: Batches as `fit` takes them (a `tf.data.Dataset` or any
                iterable of batch dicts, or for `VectorToSet` of
                `(inputs, {"set": ..., "mask": ...})` pairs), or one such batch.
            steps: Read at most this many batches (default: all; a repeated
                dataset needs it).
            set_key: Key of the target set in the batches (default
                `loss_settings.set_key`; pairs hold it under "set").

        Returns:
            The data's `dspn_tf.scaling.FeatureStatistics`.

        Raises:
            ValueError: if the model was built without set normalisation, or
                the sets have no valid element.
            KeyError: naming the target set's key if a batch lacks it.
        """
        name = type(self).__name__
        if self.set_scaling is None:
            raise ValueError(
                f"{name}.adapt: this model was built without set normalisation, so it has no statistics to "
                f"learn; build it with normalize_sets=True ({name}(..., normalize_sets=True), "
                "dspn_tf.build_model(..., normalize_sets=True), or --normalize_sets in train.train)."
            )
        key = self.loss_settings.set_key if set_key is None else set_key
        one_batch = isinstance(data, dict) or (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], dict))

        def pairs():
            for raw in [data] if one_batch else data:
                batch = self._batch(raw, "adapt")
                if key not in batch or "mask" not in batch:
                    raise KeyError(
                        f"{name}.adapt: a batch lacks the target set {key!r} (set_key) or 'mask'; "
                        f"its keys are {sorted(batch)}."
                    )
                yield batch[key], batch["mask"]

        return self.set_scaling.adapt(pairs(), steps=steps)

    def to_original_units(self, sets):
        """Sets `[..., C]` in the model's normalised units → the data's units (unchanged without normalisation)."""
        return sets if self.set_scaling is None else self.set_scaling.denormalize(sets)

    def to_model_units(self, sets, mask):
        """Sets `[..., N, C]` (and masks `[..., N]`) in the data's units → the model's units, padding 0.

        Unchanged without normalisation.
        """
        return sets if self.set_scaling is None else self.set_scaling.normalize(sets, mask)

    def _outputs(self, decoded, z, normalized):
        """The decoder's output dict plus `z`, its sets in the data's units unless `normalized`."""
        outputs = {**decoded, "z": z}
        if self.set_scaling is not None and not normalized:
            outputs["sets"] = self.set_scaling.denormalize(outputs["sets"])
        return outputs

    def compile(self, optimizer="rmsprop", *, loss_settings=None, **kwargs):
        """Keras' `compile`, with the set losses of `loss_settings` in place of `loss` and `metrics`.

        Args:
            optimizer: A Keras optimizer or its name.
            loss_settings: `LossSettings` (or dict) replacing the model's.
            **kwargs: Further arguments of `keras.Model.compile` (`run_eagerly`,
                `jit_compile`, `steps_per_execution`, ...).

        Raises:
            ValueError: if `loss`, `loss_weights`, `metrics` or `weighted_metrics` is given
                (the losses are the set losses), or the settings do not fit the model.
        """
        for name in ("loss", "loss_weights", "metrics", "weighted_metrics"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"{type(self).__name__}.compile: `{name}` is not used; the model is scored by its set losses, "
                    "chosen with loss_settings=dspn_tf.training.LossSettings(loss=..., all_steps=..., ...)."
                )
        settings = self.loss_settings if loss_settings is None else training_lib.LossSettings.from_config(loss_settings)
        try:
            training_lib.check_settings(self, settings)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}.compile: {e}") from None
        self.loss_settings = settings
        super().compile(optimizer=optimizer, **kwargs)
        if getattr(self, "_loss_means", None) is None:
            self._loss_means = _LossMeans()

    def get_compile_config(self):
        """Keras' compile config plus `loss_settings`."""
        config = super().get_compile_config()
        if config:
            config["loss_settings"] = self.loss_settings.get_config()
        return config

    def compile_from_config(self, config):
        """Compiles a loaded model again (`keras.models.load_model`), with its optimizer's state."""
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        means = getattr(self, "_loss_means", None)
        return list(means.trackers) if means else []

    def _batch(self, data, step):
        """The batch dict of `fit` / `evaluate` data; tuples and other structures are refused."""
        if isinstance(data, (tuple, list)) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict):
            raise TypeError(
                f"{type(self).__name__}.{step}: expected batches as dicts (inputs, target set "
                f"{self.loss_settings.set_key!r} and 'mask', as dspn_tf.data builds them); "
                f"received {type(data).__name__}."
            )
        return data

    def _track(self, losses):
        for tracker in self._loss_means.trackers:
            tracker.update_state(losses[tracker.name])
        return {tracker.name: tracker.result() for tracker in self._loss_means.trackers}

    def _step_settings(self):
        """`loss_settings` with an "auto" assignment solver resolved: in-graph under XLA or on an accelerator."""
        jit_compile = bool(getattr(self, "jit_compile", False)) and not self.run_eagerly
        return self.loss_settings.for_step(jit_compile=jit_compile)

    def train_step(self, data):
        batch = self._batch(data, "fit")
        # Keras runs this per replica under a tf.distribute strategy and sums the
        # replicas' gradients, so divide by the global batch as the Trainer does.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch_size = tf.cast(tf.shape(batch["mask"])[0] * replicas, tf.float32)
        _, losses, grads = training_lib.loss_and_gradients(
            self, self.optimizer, batch, self._step_settings(), global_batch_size=global_batch_size
        )
        self.optimizer.apply(grads, self.trainable_variables)
        return self._track(losses)

    def test_step(self, data):
        batch = self._batch(data, "evaluate")
        _, losses = training_lib.per_sample_losses(self, batch, self._step_settings(), training=False)
        return self._track(losses)

    def predict_step(self, data):
        """The final set, mask and z per example (batch first, so `predict` can concatenate batches)."""
        if isinstance(data, (tuple, list)) and len(data) == 1:
            data = data[0]
        outputs = self(data, training=False)
        return {"set": outputs["sets"][-1], "mask": outputs["masks"][-1], "z": outputs["z"]}

    def get_config(self):
        config = {**super().get_config(), "loss_settings": self.loss_settings.get_config()}
        if self.set_scaling is not None:  # Absent otherwise: files of models without it stay as they were.
            config["normalize_sets"] = True
        return config


@keras.saving.register_keras_serializable(package="dspn_tf")
class SetAutoEncoder(SetModel):
    """Set → z → set.

    Args:
        decoder: A `DSPN`, `MLPDecoder` or `LSTMDecoder`.
        encoder: The set encoder. Omit it for a `DSPN` decoder to use the
            decoder's encoder (the paper's weight sharing).
        loss_settings: `LossSettings` for `fit` / `evaluate` (default: Chamfer
            over all steps on `set`); see `SetModel`.
        normalize_sets: Work in normalised set units (`SetModel`, `adapt`):
            the input set is normalised before encoding and the output sets
            are returned in the data's units.
        **kwargs: Further `keras.Model` arguments (`name`).

    Call arguments:
        inputs: A dict with `set` `[batch, N, C]` (or, without `set`, the
            target set under `loss_settings.set_key`, e.g. `state`) and `mask` `[batch, N]`.
        iters: Optional inner steps for a DSPN decoder.
        normalized: Return `sets` in the model's normalised units (what the
            losses score) rather than the data's; the same without normalisation.
    """

    def __init__(self, decoder, encoder=None, *, loss_settings=None, normalize_sets=False, **kwargs):
        super().__init__(loss_settings=loss_settings, **kwargs)
        decoder = _deserialize(decoder)
        encoder = _deserialize(encoder)
        if encoder is None:
            if not isinstance(decoder, DSPN):
                raise ValueError(f"SetAutoEncoder: `encoder` is required with a {type(decoder).__name__} decoder.")
            encoder = decoder.encoder
        self.decoder = decoder
        self.encoder = encoder
        self._add_set_scaling(normalize_sets)

    @property
    def shares_encoder(self):
        return isinstance(self.decoder, DSPN) and self.decoder.encoder is self.encoder

    @property
    def iterative(self):
        """True if the decoder runs an inner loop (a `DSPN`)."""
        return isinstance(self.decoder, DSPN)

    @property
    def set_encoder(self):
        """The set encoder g (the `encode` of an export)."""
        return self.encoder

    @property
    def repr_encoder(self):
        """The encoder of target sets for the representation loss: none here, since z is g(target) already."""
        return self.encoder if self.shares_encoder else None

    def inputs_of(self, batch, set_key="set"):
        """The part of a batch dict this model reads: `batch[set_key]` and `batch["mask"]`.

        Raises:
            KeyError: naming `set_key` and the batch's keys if the set is missing.
        """
        if set_key not in batch:
            raise KeyError(
                f"SetAutoEncoder: the batch has no set {set_key!r} for the auto-encoder; its keys are {sorted(batch)}."
            )
        return {"set": batch[set_key], "mask": batch["mask"]}

    def embed(self, *inputs, training=False):
        """z of the model's input tensors (`set` in the data's units, `mask`), as `input_signature` orders them."""
        return self.encoder(self.to_model_units(inputs[0], inputs[1]), inputs[1], training=training)

    def input_signature(self, image_size=None):
        """`[TensorSpec]` of the model's input tensors (`set`, `mask`); `image_size` is ignored."""
        del image_size
        n, c = self.decoder.set_size, self.decoder.set_channels
        return [tf.TensorSpec([None, n, c], tf.float32, name="set"), tf.TensorSpec([None, n], tf.float32, name="mask")]

    def build_on_zeros(self, input_shape=None):
        """Creates every variable by one call on zeros; `input_shape` is `(N, C)` (default: the decoder's)."""
        n, c = input_shape or (self.decoder.set_size, self.decoder.set_channels)
        self({"set": tf.zeros([1, n, c]), "mask": tf.zeros([1, n])}, iters=0)
        return self

    def call(self, inputs, iters=None, training=False, normalized=False):
        x = inputs["set"] if "set" in inputs else inputs[self.loss_settings.set_key]
        z = self.embed(x, inputs["mask"], training=training)
        return self._outputs(self.decoder(z, iters=iters, training=training), z, normalized)

    def get_config(self):
        config = {**super().get_config(), "decoder": keras.saving.serialize_keras_object(self.decoder)}
        if not self.shares_encoder:
            config["encoder"] = keras.saving.serialize_keras_object(self.encoder)
        return config


@keras.saving.register_keras_serializable(package="dspn_tf")
class VectorToSet(SetModel):
    """Any input → z → set: a Keras input encoder of your choice followed by a set decoder.

    The input encoder maps whatever the task's input is (a feature vector,
    an image, a sequence) to z `[batch, latent]`; the decoder (`DSPN` or a
    baseline) predicts the set from z. `fit` / `evaluate` take batches as
    dicts (the input under `input_key`, the target set under
    `loss_settings.set_key` and `mask`) or as `(inputs, {"set": ..., "mask": ...})`
    pairs; `predict` takes the inputs alone. Exports like the other models
    (`dspn_tf.export`), with the input as `input_key`.

    Args:
        input_encoder: A Keras layer or model: inputs → `[batch, latent]`.
        decoder: A `DSPN`, `MLPDecoder` or `LSTMDecoder`.
        input_key: Name of the input in batch dicts and in exported signatures
            (a Python identifier).
        loss_settings: `LossSettings` for `fit` / `evaluate` (default:
            Hungarian on the final step of `set`, no representation loss);
            see `SetModel`.
        normalize_sets: Predict sets in normalised units (`SetModel`,
            `adapt`), returned in the data's units.
        **kwargs: Further `keras.Model` arguments (`name`).

    Call arguments:
        inputs: The input tensor, or a batch dict with it under `input_key`.
        iters: Optional inner steps for a DSPN decoder.
        normalized: Return `sets` in the model's normalised units (what the
            losses score) rather than the data's; the same without normalisation.

    Example:

    >>> from dspn_tf.encoders import FSEncoder
    >>> encoder = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)])
    >>> decoder = DSPN(FSEncoder(dim=16, latent=8), set_size=4, set_channels=2, iters=3)
    >>> model = VectorToSet(encoder, decoder)
    >>> model(tf.zeros([5, 3]))["sets"].shape
    TensorShape([4, 5, 4, 2])
    """

    default_loss_settings = training_lib.LossSettings(set_key="set", loss="hungarian", all_steps=False)
    # The attribute holding the input encoder (its name is the variables' path in checkpoints).
    _encoder_attribute = "input_encoder"

    def __init__(
        self, input_encoder, decoder, *, input_key="inputs", loss_settings=None, normalize_sets=False, **kwargs
    ):
        super().__init__(loss_settings=loss_settings, **kwargs)
        if not isinstance(input_key, str) or not input_key.isidentifier():
            raise ValueError(
                f"{type(self).__name__}: `input_key` must be a Python identifier (it names the exported "
                f"signature's input); received {input_key!r}."
            )
        setattr(self, self._encoder_attribute, _deserialize(input_encoder))
        self.decoder = _deserialize(decoder)
        self.input_key = input_key
        self._add_set_scaling(normalize_sets)

    @property
    def inputs_encoder(self):
        """The encoder of the model's inputs (`input_encoder`; `image_encoder` of an `ImageToSet`)."""
        return getattr(self, self._encoder_attribute)

    @property
    def iterative(self):
        """True if the decoder runs an inner loop (a `DSPN`)."""
        return isinstance(self.decoder, DSPN)

    @property
    def set_encoder(self):
        """The encoder g of target sets (DSPN only; baselines have none)."""
        return self.decoder.encoder if isinstance(self.decoder, DSPN) else None

    @property
    def repr_encoder(self):
        """The encoder of target sets for the representation loss (`set_encoder`)."""
        return self.set_encoder

    def _batch(self, data, step):
        """A batch dict from a dict, or from an `(inputs, {target set, "mask"})` pair."""
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], dict):
            return {self.input_key: data[0], **data[1]}
        return super()._batch(data, step)

    def inputs_of(self, batch, set_key="set"):
        """The part of a batch dict this model reads: `batch[input_key]`; `set_key` is ignored.

        Raises:
            KeyError: naming `input_key` and the batch's keys if the input is missing.
        """
        del set_key
        if self.input_key not in batch:
            raise KeyError(
                f"{type(self).__name__}: the batch has no input {self.input_key!r}; its keys are {sorted(batch)}."
            )
        return batch[self.input_key]

    def embed(self, *inputs, training=False):
        """z of the model's input tensor."""
        return self.inputs_encoder(inputs[0], training=training)

    def input_signature(self, image_size=None):
        """`[TensorSpec]` of the input, from the shape the model was built on; `image_size` is ignored.

        Raises:
            ValueError: if the model was not built on inputs of a known per-example shape.
        """
        del image_size
        shape = (getattr(self, "_build_shapes_dict", None) or {}).get("input_shape")
        if shape is None or any(side is None for side in shape[1:]):
            raise ValueError(
                f"{type(self).__name__}: cannot tell the input shape; build the model first "
                "(build_on_zeros(input_shape) or one call on a batch)."
            )
        return [tf.TensorSpec([None, *shape[1:]], tf.float32, name=self.input_key)]

    def build_on_zeros(self, input_shape):
        """Creates every variable by one call on zeros; `input_shape` is the per-example input shape."""
        self(tf.zeros([1, *input_shape]), iters=0)
        return self

    def call(self, inputs, iters=None, training=False, normalized=False):
        if isinstance(inputs, dict):
            inputs = inputs[self.input_key]
        z = self.inputs_encoder(inputs, training=training)
        return self._outputs(self.decoder(z, iters=iters, training=training), z, normalized)

    def get_config(self):
        return {
            **super().get_config(),
            "input_encoder": keras.saving.serialize_keras_object(self.inputs_encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "input_key": self.input_key,
        }


@keras.saving.register_keras_serializable(package="dspn_tf")
class ImageToSet(VectorToSet):
    """Image → z → set (CLEVR): the image case of `VectorToSet`, with the set encoder for the representation loss.

    Args:
        image_encoder: e.g. `ResNet34Encoder` or `ConvEncoder`.
        decoder: A `DSPN`, `MLPDecoder` or `LSTMDecoder`.
        loss_settings: `LossSettings` for `fit` / `evaluate` (default: the
            paper's CLEVR states: Hungarian on the final step of `state`, 0.1 x
            representation loss); see `SetModel`.
        normalize_sets: Predict sets in normalised units (`SetModel`,
            `adapt`), returned in the data's units.
        **kwargs: Further `keras.Model` arguments (`name`).

    Call arguments:
        inputs: `[batch, H, W, 3]` images, or a batch dict with them under `image`.
        iters: Optional inner steps for a DSPN decoder.
        normalized: Return `sets` in the model's normalised units rather than the data's.
    """

    default_loss_settings = training_lib.LossSettings(
        set_key="state", loss="hungarian", all_steps=False, repr_lambda=0.1
    )
    _encoder_attribute = "image_encoder"

    def __init__(self, image_encoder, decoder, *, loss_settings=None, normalize_sets=False, **kwargs):
        super().__init__(
            image_encoder,
            decoder,
            input_key="image",
            loss_settings=loss_settings,
            normalize_sets=normalize_sets,
            **kwargs,
        )

    def _batch(self, data, step):
        return SetModel._batch(self, data, step)

    def inputs_of(self, batch, set_key="set"):
        """The part of a batch dict this model reads: `batch["image"]`; `set_key` is ignored."""
        del set_key
        return batch["image"]

    def input_signature(self, image_size=None):
        """`[TensorSpec]` of the image input; `image_size` `(height, width)` defaults to the built size.

        Raises:
            ValueError: if `image_size` is not given and the model was not built on images of a known size.
        """
        if image_size is None:
            shape = (getattr(self, "_build_shapes_dict", None) or {}).get("input_shape")
            if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
                raise ValueError(
                    "ServingModule: cannot tell the image size of this ImageToSet; pass image_size=(height, width)."
                )
            image_size = shape[1:3]
        height, width = (int(side) for side in image_size)
        return [tf.TensorSpec([None, height, width, 3], tf.float32, name="image")]

    def get_config(self):
        config = super().get_config()
        config["image_encoder"] = config.pop("input_encoder")
        del config["input_key"]
        return config


@keras.saving.register_keras_serializable(package="dspn_tf")
class SetToSet(SetModel):
    """Set X → set Y with one output element per input element (row i of Y belongs to row i of X).

    With a `ConditionalDSPN` decoder, z is `input_encoder(X, mask)` and the
    decoder's inner objective embeds `[Y, X]` (iDSPN's class-specific
    numbering); with a set-equivariant decoder such as `DeepSets`, the
    decoder maps `(X, mask)` to Y itself and there is no input encoder.

    Args:
        decoder: A `ConditionalDSPN` or a `DeepSets`.
        input_encoder: The set encoder of X (e.g. `FSEncoder`); required with
            a `ConditionalDSPN`, not used otherwise.
        input_key: Key of X in batch dicts (a Python identifier).
        loss_settings: `LossSettings` for `fit` / `evaluate` (default:
            Hungarian on the final step of `set`); see `SetModel`.

    Call arguments:
        inputs: A dict with the input set under `set` (or `input_key`) and `mask` `[batch, N]`.
        iters: Optional inner steps for a DSPN decoder.

    Raises:
        ValueError: for a DSPN decoder without `input_encoder`.
    """

    default_loss_settings = training_lib.LossSettings(set_key="set", loss="hungarian", all_steps=False)

    def __init__(self, decoder, input_encoder=None, *, input_key="inputs", loss_settings=None, **kwargs):
        super().__init__(loss_settings=loss_settings, **kwargs)
        if not isinstance(input_key, str) or not input_key.isidentifier():
            raise ValueError(f"SetToSet: `input_key` must be a Python identifier; received {input_key!r}.")
        decoder = _deserialize(decoder)
        input_encoder = _deserialize(input_encoder)
        if isinstance(decoder, DSPN) and input_encoder is None:
            raise ValueError("SetToSet: a DSPN decoder needs `input_encoder`, the set encoder that gives z.")
        self.decoder = decoder
        self.input_encoder = input_encoder
        self.input_key = input_key

    @property
    def iterative(self):
        """True if the decoder runs an inner loop (a `ConditionalDSPN`)."""
        return isinstance(self.decoder, DSPN)

    @property
    def set_encoder(self):
        """None: the decoder's objective encoder embeds `[Y, X]`, not a set of the task's shape."""
        return None

    @property
    def repr_encoder(self):
        """None: there is no representation loss."""
        return None

    def inputs_of(self, batch, set_key="set"):
        """`{"set": batch[input_key], "mask": batch["mask"]}`; `set_key` is ignored.

        Raises:
            KeyError: naming `input_key` and the batch's keys if the input set is missing.
        """
        del set_key
        return {"set": self.input_set_of(batch), "mask": batch["mask"]}

    def input_set_of(self, batch):
        """The input set X of a batch dict (`batch[input_key]`).

        Raises:
            KeyError: naming `input_key` and the batch's keys if it is missing.
        """
        if self.input_key not in batch:
            raise KeyError(f"SetToSet: the batch has no input set {self.input_key!r}; its keys are {sorted(batch)}.")
        return batch[self.input_key]

    def embed(self, *inputs, training=False):
        """z of the input set and mask (a DSPN decoder only)."""
        return self.input_encoder(inputs[0], inputs[1], training=training)

    def input_signature(self, image_size=None):
        """`[TensorSpec]` of the input set and its mask; `image_size` is ignored.

        Raises:
            ValueError: if the model was not built.
        """
        del image_size
        decoder = self.decoder
        c = decoder.condition_channels if self.iterative else getattr(decoder, "input_channels", None)
        if c is None:
            raise ValueError("SetToSet: cannot tell the input shape; build the model first (build_on_zeros).")
        n = decoder.set_size
        return [tf.TensorSpec([None, n, c], tf.float32, name="set"), tf.TensorSpec([None, n], tf.float32, name="mask")]

    def build_on_zeros(self, input_shape):
        """Creates every variable by one call on zeros; `input_shape` is `(N, C_in)` of the input set."""
        n, c = (int(side) for side in input_shape)
        self({"set": tf.zeros([1, n, c]), "mask": tf.ones([1, n])}, iters=0)
        return self

    def call(self, inputs, iters=None, training=False):
        x = inputs["set"] if "set" in inputs else inputs[self.input_key]
        mask = inputs["mask"]
        if not self.iterative:
            out = self.decoder(x, mask, training=training)
            return {**out, "z": tf.zeros([tf.shape(x)[0], 0], out["sets"].dtype)}
        z = self.input_encoder(x, mask, training=training)
        return {**self.decoder(z, condition=x, iters=iters, training=training), "z": z}

    def get_config(self):
        config = {
            **super().get_config(),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "input_key": self.input_key,
        }
        if self.input_encoder is not None:
            config["input_encoder"] = keras.saving.serialize_keras_object(self.input_encoder)
        return config


def is_set_model(obj):
    """True for the models SavedModel export accepts: `SetAutoEncoder` and `VectorToSet` (not `SetToSet`).

    A `SetToSet` model's decoder needs the input set as well as z, which the
    export's `decode(z)` signature cannot give; save it as a `.keras` file.
    """
    return isinstance(obj, (SetAutoEncoder, VectorToSet))


def build_model(
    task,
    *,
    decoder="dspn",
    set_size,
    set_channels,
    dim,
    latent,
    decoder_dim=None,
    set_encoder=None,
    image_encoder="conv",
    n_pieces=20,
    inner=None,
    mask_offset=0.0,
    input_shape=None,
    iters=None,
    inner_lr=None,
    dspn_options=None,
    separate_objective_encoder=False,
    objective_dim=None,
    projection=None,
    start_stddev=None,
    normalize_sets=False,
    input_key="inputs",
):
    """Builds the model of one of the paper's tasks from plain settings.

    Args:
        task: "autoencoder" (set → set, set-MNIST), "image" (image → set,
            CLEVR) or "set_to_set" (one output element per input element,
            iDSPN's class-specific numbering: a `SetToSet`).
        decoder: "dspn", "mlp" or "lstm"; for "set_to_set", "dspn" (a
            `ConditionalDSPN` with its own objective encoder) or "deepsets".
        set_size: Set slots N.
        set_channels: Features per element C.
        dim: Hidden width of the set encoder.
        latent: Embedding size.
        decoder_dim: Hidden width of a baseline decoder and of an MLP starting
            set (default `dim`).
        set_encoder: "fs" or "rnfs" (default: "fs" for the auto-encoder, "rnfs" for images).
        image_encoder: "conv" (small, for CPUs), "resnet34" (the DSPN paper's)
            or "resnet18" (iDSPN's).
        n_pieces: FSPool pieces.
        inner: The DSPN's inner loop: a `dspn_tf.inner.InnerLoopConfig` or a
            dict of its fields (default: the DSPN paper's). Ignored by the baselines.
        mask_offset: Added to a baseline's raw mask output (the paper's
            appendix B.1 uses 1 for set-MNIST; the reference code 0); ignored
            by the DSPN.
        input_shape: If given, the model is built by one call on zeros of this
            per-example shape (`(N, C)` for the auto-encoder, `(H, W, 3)` for
            images), so a checkpoint restores into existing variables.
        iters: Shorthand for `inner.iters` (kept for existing callers).
        inner_lr: Shorthand for `inner.lr`.
        dspn_options: Further `InnerLoopConfig` fields as a dict (`gradient`,
            `momentum`, ...), merged into `inner`.
        separate_objective_encoder: Auto-encoder with a DSPN decoder only: if
            True, the DSPN's inner objective has its own set encoder (width
            `objective_dim`), not the input encoder (iDSPN's random sets);
            if False, the two are one (the DSPN paper).
        objective_dim: Hidden width of the separate objective encoder (default `dim`).
        projection: The DSPN's projection after every inner step (None:
            `ClipMask`; "full_mask": the mask held at 1, for sets without
            padding; "simplex"; or a `Projection`).
        start_stddev: With the learned starting set: None initialises it
            U[0, 1) (the DSPN paper), a positive number N(0, start_stddev^2).
        normalize_sets: Build the model with set-feature normalisation
            (`SetModel`); fill its statistics with `model.adapt(data)` before training.
        input_key: For "set_to_set": the key of the input set in batch dicts.

    Returns:
        A `SetAutoEncoder`, `ImageToSet` or `SetToSet`.

    Raises:
        ValueError: naming the argument that is unknown or out of range.
    """
    # Imported here to keep this module importable without a cycle.
    from dspn_tf.baselines import DeepSets, LSTMDecoder, MLPDecoder
    from dspn_tf.conditional import ConditionalDSPN
    from dspn_tf.encoders import FSEncoder, RNFSEncoder
    from dspn_tf.image_encoders import ConvEncoder, ResNet18Encoder, ResNet34Encoder
    from dspn_tf.inner import InnerLoopConfig, LearnedStart, MLPStart

    tasks = {"autoencoder": SetAutoEncoder, "image": ImageToSet, "set_to_set": SetToSet}
    set_encoders = {"fs": FSEncoder, "rnfs": RNFSEncoder}
    baselines = {"mlp": MLPDecoder, "lstm": LSTMDecoder}
    images = {"conv": ConvEncoder, "resnet18": ResNet18Encoder, "resnet34": ResNet34Encoder}
    _choose("task", task, tasks)
    set_encoder = set_encoder or ("rnfs" if tasks[task] is ImageToSet else "fs")
    _choose("set_encoder", set_encoder, set_encoders)
    if tasks[task] is SetToSet:
        _choose("decoder", decoder, ["dspn", "deepsets"])
        if input_shape is None:
            raise ValueError("build_model: task 'set_to_set' needs `input_shape`, (N, C_in) of the input set.")
    else:
        _choose("decoder", decoder, ["dspn", *baselines])
    if tasks[task] is ImageToSet:
        _choose("image_encoder", image_encoder, images)
    if isinstance(inner, InnerLoopConfig):
        inner = inner.as_dict()
    shorthand = {"iters": iters, "lr": inner_lr}
    inner = {**(inner or {}), **(dspn_options or {}), **{k: v for k, v in shorthand.items() if v is not None}}
    try:
        inner = InnerLoopConfig(**inner).as_dict()
    except TypeError as e:
        raise ValueError(f"build_model: {e}") from None

    if separate_objective_encoder and (decoder != "dspn" or tasks[task] is not SetAutoEncoder):
        raise ValueError(
            "build_model: `separate_objective_encoder` is for an auto-encoder with a DSPN decoder; received "
            f"task={task!r}, decoder={decoder!r}."
        )
    if objective_dim is not None:
        checks.positive_ints("build_model", objective_dim=objective_dim)
    if start_stddev is not None and inner["starting_set"] != "learned":
        raise ValueError(
            "build_model: `start_stddev` initialises the learned starting set; received starting_set="
            f"{inner['starting_set']!r}."
        )

    def make_set_encoder(width=dim):
        return set_encoders[set_encoder](width, latent, n_pieces=n_pieces)

    if tasks[task] is SetToSet:
        if decoder == "deepsets":
            model = SetToSet(DeepSets(set_size, set_channels, decoder_dim or dim), input_key=input_key)
        else:
            if inner["starting_set"] == "mlp":
                inner["starting_set"] = MLPStart(dim=decoder_dim or dim)
            condition = int(input_shape[-1])
            dec = ConditionalDSPN(
                make_set_encoder(), set_size, set_channels, condition_channels=condition, projection=projection, **inner
            )
            model = SetToSet(dec, make_set_encoder(), input_key=input_key)
        return model.build_on_zeros(tuple(input_shape))
    if decoder == "dspn":
        if inner["starting_set"] == "mlp":
            inner["starting_set"] = MLPStart(dim=decoder_dim or dim)
        elif start_stddev is not None:
            inner["starting_set"] = LearnedStart(stddev=start_stddev)
        objective_encoder = make_set_encoder(objective_dim or dim) if separate_objective_encoder else None
        dec = DSPN(objective_encoder or make_set_encoder(), set_size, set_channels, projection=projection, **inner)
    else:
        dec = baselines[decoder](set_size, set_channels, decoder_dim or dim, mask_offset=mask_offset)
    if tasks[task] is SetAutoEncoder:
        shared = decoder == "dspn" and not separate_objective_encoder
        model = SetAutoEncoder(dec, encoder=None if shared else make_set_encoder(), normalize_sets=normalize_sets)
    else:
        model = ImageToSet(images[image_encoder](latent), dec, normalize_sets=normalize_sets)
    return model if input_shape is None else model.build_on_zeros(tuple(input_shape))


def _choose(name, value, choices):
    if value not in choices:
        raise ValueError(f"build_model: `{name}` must be one of {sorted(choices)}; received {value!r}.")
