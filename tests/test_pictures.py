"""The explanation pictures: the combined map of all detections (the ODAM paper's Fig. 3,
right) against a hand-computed case."""
import numpy as np

from odamtrain.visualization import box_colour, combine_heatmaps, render_combined


def test_combined_map_hand_computed():
    img = np.full((2, 2, 3), 100, np.uint8)
    maps = np.array([[[0.0, 2.0], [4.0, 4.0]],    # min-max: 0, .5, 1, 1
                     [[1.0, 1.0], [3.0, 5.0]]])  # min-max: 0, 0, .5, 1
    out = combine_heatmaps(img, maps, alpha=0.5)
    c0, c1 = np.array(box_colour(0), float), np.array(box_colour(1), float)
    # pixel (0, 0): both 0 -> the image; (0, 1): map 0 wins with .5; (1, 0): map 0 with 1;
    # (1, 1): a tie at 1 -> the first map
    want = {(0, 0): np.full(3, 100.0), (0, 1): 100 * 0.75 + c0 * 0.25,
            (1, 0): 100 * 0.5 + c0 * 0.5, (1, 1): 100 * 0.5 + c0 * 0.5}
    for (y, x), v in want.items():
        np.testing.assert_array_equal(out[y, x], v.astype(np.uint8))
    maps[0] = 0  # an all-zero map never wins over a lit one
    out = combine_heatmaps(img, maps, alpha=0.5)
    np.testing.assert_array_equal(out[1, 1], (100 * 0.5 + c1 * 0.5).astype(np.uint8))
    np.testing.assert_array_equal(combine_heatmaps(img, maps[:0]), img)


def test_boxes_are_drawn_in_their_maps_colours():
    img = np.zeros((40, 60, 3), np.uint8)
    maps = np.zeros((2, 40, 60))
    maps[0, 5:15, 5:25] = 1
    maps[1, 20:35, 30:55] = 1
    boxes = np.array([[5, 5, 25, 15], [30, 20, 55, 35]], float)
    out = render_combined(img, boxes, maps)
    np.testing.assert_array_equal(out[10, 5], box_colour(0))  # left edge of box 0
    np.testing.assert_array_equal(out[30, 55], box_colour(1))  # right edge of box 1
    inner = combine_heatmaps(img, maps)[10, 15]  # inside box 0, away from the drawing
    np.testing.assert_array_equal(out[10, 15], inner)
