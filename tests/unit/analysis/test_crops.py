import numpy as np

from edge.analysis.crops import crop_cells


def test_crop_is_square_context_around_the_box():
    field = np.zeros((200, 300, 3), np.uint8)
    field[50:90, 100:160] = (255, 0, 0)  # a 60x40 red "cell"
    crops = crop_cells(field, np.array([[100, 50, 160, 90]], np.float32), size=64, margin=0.0)
    assert crops.shape == (1, 64, 64, 3) and crops.dtype == np.uint8
    # square of side 60 centred on the box: the cell fills the full width and 2/3 of the height
    assert crops[0, 32, :, 0].min() == 255
    assert crops[0, 2, 32, 0] == 0 and crops[0, 61, 32, 0] == 0


def test_crop_beyond_the_border_repeats_edge_pixels():
    field = np.zeros((100, 100, 3), np.uint8)
    field[:, :10] = 200
    crops = crop_cells(field, np.array([[-20, 40, 20, 60]], np.float32), size=32, margin=0.5)
    assert crops[0, 16, 0, 0] == 200  # left part lies outside: filled with the edge column


def test_no_boxes():
    assert crop_cells(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 4), np.float32), 32, 0.1).shape == (
        0,
        32,
        32,
        3,
    )
