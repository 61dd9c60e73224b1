"""Image encoders that map an image to the embedding z (docs/algorithm.md §5)."""

import keras
import tensorflow as tf

from dspn_tf import checks

# PyTorch's BatchNorm defaults, which the reference was trained with. Keras'
# momentum weighs the old running value, so PyTorch's 0.1 is Keras' 0.9.
# Synchronised statistics make a multi-replica step equal a one-device step
# on the same global batch (no effect without a distribution strategy).
_BN = {"epsilon": 1e-5, "momentum": 0.9, "synchronized": True}


def _conv(filters, kernel, stride, padding, use_bias, name):
    layers = []
    if padding:
        # Explicit symmetric padding like PyTorch, so stride-2 convs see the
        # same pixels (Keras' "same" pads asymmetrically).
        layers.append(keras.layers.ZeroPadding2D(padding, name=f"{name}_pad"))
    layers.append(
        keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="valid",
            use_bias=use_bias,
            kernel_initializer="glorot_uniform",
            name=name,
        )
    )
    return layers


def _track(owner, layers):
    """Makes each layer of a Python list an attribute of `owner`.

    Keras 3 tracks list attributes for its own saving, but `tf.train.Checkpoint`
    does not look inside them: without this, training checkpoints silently
    miss every layer held in a list.
    """
    for layer in layers:
        setattr(owner, f"tracked_{layer.name}", layer)


def _build_chain(layers, shape):
    """Builds each layer on the output shape of the previous one; returns the last shape."""
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


def _run(layers, x, training):
    for layer in layers:
        if isinstance(layer, (keras.layers.BatchNormalization, BasicBlock)):
            x = layer(x, training=training)
        else:
            x = layer(x)
    return x


def _resnet_stem():
    """torchvision's ResNet stem: conv 7×7 stride 2, BN, ReLU, max-pool 3×3 stride 2."""
    return [
        *_conv(64, 7, 2, 3, False, "conv1"),
        keras.layers.BatchNormalization(name="bn1", **_BN),
        keras.layers.ReLU(name="relu"),
        keras.layers.ZeroPadding2D(1, name="maxpool_pad"),
        keras.layers.MaxPooling2D(3, strides=2, name="maxpool"),
    ]


def _resnet_blocks(stages):
    """BasicBlocks of `(filters, count, first stride)` stages, named like torchvision's `layer<i>`."""
    blocks = []
    for stage, (filters, count, stride) in enumerate(stages, start=1):
        for i in range(count):
            blocks.append(BasicBlock(filters, stride if i == 0 else 1, name=f"layer{stage}_{i}"))
    return blocks


@keras.saving.register_keras_serializable(package="dspn_tf")
class BasicBlock(keras.layers.Layer):
    """ResNet basic block: two 3×3 convs with BN, identity or 1×1 shortcut."""

    def __init__(self, filters, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.stride = stride
        self.body = [
            *_conv(filters, 3, stride, 1, False, "conv1"),
            keras.layers.BatchNormalization(name="bn1", **_BN),
            keras.layers.ReLU(name="relu1"),
            *_conv(filters, 3, 1, 1, False, "conv2"),
            keras.layers.BatchNormalization(name="bn2", **_BN),
        ]
        self.shortcut = []
        _track(self, self.body)

    def build(self, input_shape):
        if self.stride != 1 or input_shape[-1] != self.filters:
            self.shortcut = [
                *_conv(self.filters, 1, self.stride, 0, False, "downsample"),
                keras.layers.BatchNormalization(name="downsample_bn", **_BN),
            ]
            _track(self, self.shortcut)
        _build_chain(self.body, input_shape)
        _build_chain(self.shortcut, input_shape)

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for layer in self.body:
            shape = layer.compute_output_shape(shape)
        return shape

    def call(self, inputs, training=False):
        return tf.nn.relu(_run(self.body, inputs, training) + _run(self.shortcut, inputs, training))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "stride": self.stride}


@keras.saving.register_keras_serializable(package="dspn_tf")
class ResNet34Encoder(keras.layers.Layer):
    """ResNet34 (torchvision layout, no avgpool / fc, not pretrained) and the DSPN head.

    128×128 input → 4×4×512 → Conv 3×3 stride 2 pad 1 (512) → BatchNorm →
    Conv 2×2 (latent) → `[batch, latent]`. No activation after the head's BN.

    Args:
        latent: Embedding size (paper: 512).

    Call arguments:
        inputs: `[batch, 128, 128, 3]` images in [0, 1].
        training: Batch statistics in BatchNorm when True.

    Output shape:
        `[batch, latent]`.
    """

    stages = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

    def __init__(self, latent, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("ResNet34Encoder", latent=latent)
        self.latent = latent
        self.stem = _resnet_stem()
        self.blocks = _resnet_blocks(self.stages)
        self.head = [
            *_conv(512, 3, 2, 1, True, "head_conv1"),
            keras.layers.BatchNormalization(name="head_bn", **_BN),
            *_conv(latent, 2, 1, 0, True, "head_conv2"),
        ]
        self.flatten = keras.layers.Flatten(name="flatten")
        _track(self, self.stem + self.blocks + self.head)

    def build(self, input_shape):
        shape = _build_chain(self.stem, input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        _build_chain(self.head + [self.flatten], shape)

    def call(self, inputs, training=False):
        if inputs.shape.rank != 4:
            raise ValueError(f"ResNet34Encoder: images must be [batch, height, width, 3]; received {inputs.shape}.")
        x = _run(self.stem, inputs, training)
        for block in self.blocks:
            x = block(x, training=training)
        x = _run(self.head, x, training)  # Shape: [batch, 1, 1, latent] for 128×128 input.
        return self.flatten(x)

    def get_config(self):
        return {**super().get_config(), "latent": self.latent}


@keras.saving.register_keras_serializable(package="dspn_tf")
class ResNet18Encoder(keras.layers.Layer):
    """ResNet18 (torchvision layout, no avgpool / fc, not pretrained) and iDSPN's head.

    iDSPN's CLEVR image encoder (Zhang et al., ICLR 2022): the ResNet18 feature
    map (4×4×512 at 128 px) → BatchNorm → Conv 2×2 stride 2 with
    `latent / s²` filters → flatten to `[batch, latent]`, where s = H / 64 is
    the head's output side (2 at 128 px), so `latent` must be divisible by s².

    Args:
        latent: Embedding size (iDSPN: 512).

    Call arguments:
        inputs: `[batch, height, width, 3]` images in [0, 1]; height and width
            multiples of 64.
        training: Batch statistics in BatchNorm when True.

    Output shape:
        `[batch, latent]`.
    """

    stages = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))

    def __init__(self, latent, **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("ResNet18Encoder", latent=latent)
        self.latent = latent
        self.stem = _resnet_stem()
        self.blocks = _resnet_blocks(self.stages)
        self.head_bn = keras.layers.BatchNormalization(name="head_bn", **_BN)
        self.head_conv = None
        self.flatten = keras.layers.Flatten(name="flatten")
        _track(self, self.stem + self.blocks)

    def build(self, input_shape):
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None or height % 64 or width % 64:
            raise ValueError(
                f"ResNet18Encoder: image height and width must be known multiples of 64; received {input_shape}."
            )
        side = (height // 64) * (width // 64)
        if self.latent % side:
            raise ValueError(
                f"ResNet18Encoder: `latent` must be divisible by {side} (the head's {height // 64}×{width // 64} "
                f"output) at {height}×{width} px; received latent={self.latent}."
            )
        self.head_conv = keras.layers.Conv2D(
            self.latent // side, 2, strides=2, padding="valid", kernel_initializer="glorot_uniform", name="head_conv"
        )
        shape = _build_chain(self.stem + self.blocks, input_shape)
        _build_chain([self.head_bn, self.head_conv, self.flatten], shape)

    def call(self, inputs, training=False):
        if inputs.shape.rank != 4:
            raise ValueError(f"ResNet18Encoder: images must be [batch, height, width, 3]; received {inputs.shape}.")
        x = _run(self.stem + self.blocks, inputs, training)
        x = self.head_conv(self.head_bn(x, training=training))  # Shape: [batch, H / 64, W / 64, latent / s²].
        return self.flatten(x)

    def get_config(self):
        return {**super().get_config(), "latent": self.latent}


@keras.saving.register_keras_serializable(package="dspn_tf")
class ConvEncoder(keras.layers.Layer):
    """A small CNN for CPU runs: stride-2 3×3 convs with BN and ReLU, then Dense(latent).

    Args:
        latent: Embedding size.
        filters: Channels of each stride-2 conv; 4 convs take 128 px to 8 px.

    Call arguments:
        inputs: `[batch, height, width, 3]` images in [0, 1] (height and width known).
        training: Batch statistics in BatchNorm when True.

    Output shape:
        `[batch, latent]`.
    """

    def __init__(self, latent, filters=(32, 64, 64, 128), **kwargs):
        super().__init__(**kwargs)
        checks.positive_ints("ConvEncoder", latent=latent)
        self.latent = latent
        self.filters = tuple(int(f) for f in filters)
        self.body = []
        for i, f in enumerate(self.filters):
            self.body += [
                *_conv(f, 3, 2, 1, False, f"conv{i}"),
                keras.layers.BatchNormalization(name=f"bn{i}", **_BN),
                keras.layers.ReLU(name=f"relu{i}"),
            ]
        self.flatten = keras.layers.Flatten(name="flatten")
        self.project = keras.layers.Dense(latent, name="project")
        _track(self, self.body)

    def build(self, input_shape):
        _build_chain(self.body + [self.flatten, self.project], input_shape)

    def call(self, inputs, training=False):
        if inputs.shape.rank != 4:
            raise ValueError(f"ConvEncoder: images must be [batch, height, width, 3]; received {inputs.shape}.")
        return self.project(self.flatten(_run(self.body, inputs, training)))

    def get_config(self):
        return {**super().get_config(), "latent": self.latent, "filters": list(self.filters)}
