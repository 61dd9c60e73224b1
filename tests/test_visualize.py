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
