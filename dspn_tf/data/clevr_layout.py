"""The layout of a CLEVR object state, in one place (docs/algorithm.md, "Data").

A state row has 18 features: the object's `3d_coords` divided by
`COORD_SCALE` (x, y, z), then one one-hot group per attribute in the order of
`ATTRIBUTES`: material, colour, shape, size. The one-hot orders are the DSPN
reference implementation's, so states and AP are comparable with it.
`dspn_tf.data.clevr` writes states in this layout, `dspn_tf.metrics` scores
them and `dspn_tf.visualize` draws them.
"""

MATERIALS = ("rubber", "metal")
COLORS = ("cyan", "blue", "yellow", "purple", "red", "green", "gray", "brown")
SHAPES = ("sphere", "cube", "cylinder")
SIZES = ("large", "small")
ATTRIBUTES = (("material", MATERIALS), ("color", COLORS), ("shape", SHAPES), ("size", SIZES))

# Coordinates are stored divided by 3 (CLEVR places objects in [-3, 3]^2), so
# every feature is of order 1; distances are measured in scene units.
COORD_SCALE = 3.0
COORDS = slice(0, 3)


def _group_slices():
    slices, start = [], COORDS.stop
    for _, values in ATTRIBUTES:
        slices.append(slice(start, start + len(values)))
        start += len(values)
    return tuple(slices)


# The feature slice of each one-hot group, in the order of `ATTRIBUTES`.
ATTRIBUTE_SLICES = _group_slices()
STATE_DIM = ATTRIBUTE_SLICES[-1].stop  # 18
