"""dspn_tf: Deep Set Prediction Networks in TensorFlow / Keras 3."""

from dspn_tf.baselines import LSTMDecoder, MLPDecoder
from dspn_tf.dspn import DSPN
from dspn_tf.encoders import FSEncoder, RNFSEncoder
from dspn_tf.fspool import FSPool
from dspn_tf import losses

__version__ = "0.1.0"

__all__ = ["DSPN", "FSEncoder", "FSPool", "LSTMDecoder", "MLPDecoder", "RNFSEncoder", "losses"]
