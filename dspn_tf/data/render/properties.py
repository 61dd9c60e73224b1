"""CLEVR's object vocabulary (its properties.json) and the shapes' proportions."""

SHAPES = ("cube", "sphere", "cylinder")
# CLEVR's properties.json colours (sRGB, 0..255).
COLORS = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SIZES = {"large": 0.7, "small": 0.35}
MATERIALS = ("rubber", "metal")


# Shape extents relative to the CLEVR "radius" r (= centre height), measured on
# real CLEVR renders with the fitted camera: cubes and cylinders are a little
# narrower than 2r, all objects are 2r tall and rest on the ground.
CUBE_HALF_SIDE = 0.9
CYLINDER_RADIUS = 0.88
