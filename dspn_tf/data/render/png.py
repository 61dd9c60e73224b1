"""PNG encoding of rendered images."""

import struct
import zlib

import numpy as np


def encode_png(image):
    """Fast PNG of a uint8 [h, w, 3] image.

    zlib level 1 with the "up" filter: CLEVR-like images are smooth
    vertically, so this is ~3x faster than PIL's default for similar size.
    """
    h, w, _ = image.shape
    rows = image.reshape(h, w * 3)
    up = np.empty((h, w * 3 + 1), np.uint8)
    up[:, 0] = 2  # PNG filter type 2: difference with the row above.
    up[0, 1:] = rows[0]
    up[1:, 1:] = rows[1:] - rows[:-1]  # uint8 wraps, as PNG's filter does.

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(up.tobytes(), 1))
        + chunk(b"IEND", b"")
    )
