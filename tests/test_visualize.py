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


def test_boxes_progression_draws_enlarged_boxes_with_the_baseline_before_the_target():
    """Boxes on a 64 px image are drawn on a 192 px panel; a baseline's boxes come after the steps."""
    size, grey = 192, 0.5
    image = np.full((64, 64, 3), grey)
    step = np.array([[0.25, 0.25, 0.75, 0.75]])  # A centred box, half the side.
    other = np.array([[0.0, 0.0, 0.5, 0.5]])  # The baseline's: the top-left quarter.
    picture = visualize.boxes_progression(
        image, step[None], np.array([[1.0]]), step, np.array([0.5]), baseline=(other, np.array([1.0]))
    )
    assert picture.shape == (size, 3 * size + 2 * 2, 3)  # The step, the baseline, the target.
    panels = [picture[:, k * (size + 2) : k * (size + 2) + size].astype(float) for k in range(3)]
    edge = int(round(0.25 * (size - 1)))
    red = np.array([255.0, 40.0, 40.0])
    col = 5 * size // 8  # On the step's top edge, right of the baseline's box.
    np.testing.assert_allclose(panels[0][edge, col], red, atol=1)  # The step's top edge, mask 1.
    np.testing.assert_allclose(panels[0][size // 2, size // 2], 255 * grey, atol=1)  # Inside: the image.
    np.testing.assert_allclose(panels[1][0, edge], red, atol=1)  # The baseline's top edge at the panel's top.
    np.testing.assert_allclose(panels[1][edge, col], 255 * grey, atol=1)  # Not the step's box.
    np.testing.assert_allclose(panels[2][edge, col], 0.5 * red + 0.5 * 255 * grey, atol=1)  # Mask 0.5.


def test_progression_rows_draw_the_baseline_panel_for_every_task():
    """TensorBoard and train.pictures (train/loop.py) pass a baseline to each task's drawing, boxes included."""
    import tensorflow as tf

    from train import loop, tasks

    steps, n = 2, 3
    boxes = np.tile(np.array([0.2, 0.2, 0.6, 0.6], np.float32), (steps, 1, n, 1))
    masks = np.ones((steps, 1, n), np.float32)
    batch = {
        "image": tf.fill([1, 64, 64, 3], 0.5),
        "boxes": tf.constant(boxes[0]),
        "mask": tf.ones([1, n]),
    }
    boxes_task = tasks.get("clevr_boxes")
    plain = loop.progression_rows(boxes, masks, batch, boxes_task, 1)[0]
    with_baseline = loop.progression_rows(boxes, masks, batch, boxes_task, 1, baseline=(boxes[-1], masks[-1]))[0]
    assert with_baseline.shape[1] == plain.shape[1] + plain.shape[0] + 2  # One more panel (and its gap).
