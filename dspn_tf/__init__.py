"""dspn_tf: Deep Set Prediction Networks in TensorFlow / Keras 3."""

from dspn_tf import losses, optimizers
from dspn_tf.baselines import DeepSets, LSTMDecoder, MLPDecoder
from dspn_tf.conditional import ConditionalDSPN
from dspn_tf.dspn import DSPN
from dspn_tf.encoders import FSEncoder, RNFSEncoder, SetEncoder
from dspn_tf.fspool import FSPool
from dspn_tf.image_encoders import ConvEncoder, ResNet18Encoder, ResNet34Encoder
from dspn_tf.models import ImageToSet, SetAutoEncoder, SetToSet, VectorToSet, build_model
from dspn_tf.step_size import suggest_inner_lr

__version__ = "0.1.0"

__all__ = [
    "ConditionalDSPN",
    "ConvEncoder",
    "DSPN",
    "DeepSets",
    "FSEncoder",
    "FSPool",
    "ImageToSet",
    "LSTMDecoder",
    "MLPDecoder",
    "RNFSEncoder",
    "ResNet18Encoder",
    "ResNet34Encoder",
    "SetAutoEncoder",
    "SetToSet",
    "VectorToSet",
    "SetEncoder",
    "build_model",
    "losses",
    "optimizers",
    "suggest_inner_lr",
]
