"""Progression pictures: set-MNIST points drawn with their mask as opacity, big enough to read."""

import numpy as np

from dspn_tf import visualize


def test_set_progression_draws_each_point_with_its_mask_as_darkness():
    sets = np.array([[[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]] * 2)  # Two steps, three points.
    masks = np.array([[1.0, 0.5, 0.0]] * 2)
    picture = visualize.set_progression(sets, masks, sets[0], np.ones(3))
    size = 128
    assert picture.dtype == np.uint8 and picture.shape[0] == size
    assert picture.shape[1] == 3 * size + 2 * 2  # Two steps and the target, 2 px gaps.
    step = picture[:, :size, 0]
    assert step[0, 0] == 0  # Mask 1: black.
    middle = int(round(0.5 * (size - 3)))
    assert abs(int(step[middle, middle]) - 127) <= 1  # Mask 0.5: mid grey.
    assert step[size - 1, size - 1] == 255  # Mask 0: not drawn.
    target = picture[:, 2 * (size + 2) :, 0]
    assert target[size - 1, size - 1] == 0  # The target's mask is 1 everywhere.


def test_states_on_image_draws_each_object_at_its_pixel_with_its_colour_and_mask():
    """Image-task pictures: a marker where the object's 3D position projects, in its colour, mask as opacity."""
    from dspn_tf.data import clevr
    from dspn_tf.data.render import properties, scenes

    scene, _ = scenes.make_scene(0, "val", 0, render=False)
    obj = max(scene["objects"], key=lambda o: o["pixel_coords"][2])  # The farthest object: the smallest marker.
    state = clevr.object_state(obj)
    size, grey = 192, 0.5
    image = np.full((64, 64, 3), grey)
    picture = visualize.states_on_image(
        image, np.stack([state[None]] * 2), np.array([[1.0], [0.5]]), state[None], np.array([0.0]), clevr.ATTRIBUTES
    )
    panels = [picture[:, k * (size + 2) : k * (size + 2) + size].astype(float) for k in range(4)]
    assert picture.shape == (size, 4 * size + 3 * 2, 3)
    # CLEVR's pixel_coords (of the camera the scenes are rendered with), scaled from 480 x 320 to the panel.
    col = int(round(obj["pixel_coords"][0] * size / 480))
    row = int(round(obj["pixel_coords"][1] * size / 320))
    colour = np.array(properties.COLORS[obj["color"]], float)
    np.testing.assert_allclose(panels[0], 255 * grey, atol=1)  # The image itself.
    np.testing.assert_allclose(panels[1][row, col], colour, atol=1)  # Mask 1: the object's colour.
    np.testing.assert_allclose(panels[2][row, col], 0.5 * colour + 0.5 * 255 * grey, atol=1)  # Mask 0.5.
    np.testing.assert_allclose(panels[3], 255 * grey, atol=1)  # Mask 0 (the target here): nothing drawn.
    drawn = np.argwhere(np.abs(panels[1] - panels[0]).sum(-1) > 0)
    assert abs(drawn[:, 0].mean() - row) <= 2 and abs(drawn[:, 1].mean() - col) <= 3  # Centred there.
