"""cxrfusion.augment: seeded and reproducible, the global RNG untouched, identity exact, known
transforms where they belong (shift, quarter turn, flip, zoom, brightness and contrast), the
drawn parameters inside their ranges."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrfusion import augment as A
from cxrfusion.params import Augment

NONE = Augment(rotation=0, translate=0, scale=0, flip=0, brightness=0, contrast=0)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def rows(n: int, **columns) -> torch.Tensor:
    """n parameter rows: identity except the columns given (by COLUMNS' names)."""
    out = torch.tensor([A.IDENTITY] * n, dtype=torch.float32)
    for name, value in columns.items():
        out[:, A.COLUMNS.index(name)] = value
    return out


def shifted(x: torch.Tensor, right: int, down: int) -> torch.Tensor:
    """x moved right and down by whole pixels, black where nothing comes in."""
    out = torch.zeros_like(x)
    s = x.shape[-1]
    out[:, max(down, 0):s + min(down, 0), max(right, 0):s + min(right, 0)] = \
        x[:, max(-down, 0):s - max(down, 0), max(-right, 0):s - max(right, 0)]
    return out


@pytest.mark.parametrize("jitter", [False, True])
def test_same_seed_same_batch_another_seed_another(jitter):
    x = images()
    ranges = Augment(flip=0.5)
    a = A.augment(x, torch.Generator().manual_seed(7), ranges, jitter)
    b = A.augment(x, torch.Generator().manual_seed(7), ranges, jitter)
    c = A.augment(x, torch.Generator().manual_seed(8), ranges, jitter)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    # the generator moves on: the next batch gets other parameters
    g = torch.Generator().manual_seed(7)
    assert not torch.equal(A.draw(4, g, ranges, jitter), A.draw(4, g, ranges, jitter))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("jitter", [False, True])
def test_shape_dtype_and_device_kept(device, jitter):
    x = images(5, 24).to(device)
    y = A.augment(x, torch.Generator().manual_seed(0), Augment(), jitter)
    assert y.dtype == torch.uint8 and y.shape == (5, 24, 24) and y.device == x.device
    drawn = A.draw(5, torch.Generator().manual_seed(0), Augment(), jitter)
    assert drawn.dtype == torch.float32 and drawn.shape == (5, A.K) and drawn.device.type == "cpu"


def test_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    g = torch.Generator().manual_seed(0)
    drawn = A.draw(8, g, Augment(flip=0.5), True)
    A.apply(images(8), drawn)
    A.augment(images(8), g, Augment(), True)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("size", [7, 32, 48, 240])
@pytest.mark.parametrize("jitter", [False, True])
def test_identity_returns_the_input_bitwise(size, jitter):
    x = images(4, size)
    assert torch.equal(A.augment(x, torch.Generator().manual_seed(0), NONE, jitter), x)
    assert torch.equal(A.apply(x, rows(4)), x)


@pytest.mark.parametrize("right,down", [(3, 0), (0, -2), (-5, 4)])
def test_whole_pixel_shift_moves_a_bright_square(right, down):
    s = 32
    x = torch.zeros(1, s, s, dtype=torch.uint8)
    x[0, 10:16, 12:18] = 200
    y = A.apply(x, rows(1, translate_x=right / s, translate_y=down / s))
    expected = torch.zeros_like(x)
    expected[0, 10 + down:16 + down, 12 + right:18 + right] = 200
    assert torch.equal(y, expected)
    noise = images(3, s)  # exact on any picture, black coming in at the far edge
    assert torch.equal(A.apply(noise, rows(3, translate_x=right / s, translate_y=down / s)),
                       shifted(noise, right, down))


def test_quarter_turn_maps_a_marked_corner():
    s = 16
    x = torch.zeros(1, s, s, dtype=torch.uint8)
    x[0, 0:3, 0:3] = 255  # top left
    y = A.apply(x, rows(1, rotation=90.0))  # counter-clockwise on screen: top left -> bottom left
    assert torch.equal(y[0, s - 3:, 0:3], torch.full((3, 3), 255, dtype=torch.uint8))
    assert int(y.sum()) == 9 * 255
    y = A.apply(x, rows(1, rotation=-90.0))  # clockwise: top left -> top right
    assert torch.equal(y[0, 0:3, s - 3:], torch.full((3, 3), 255, dtype=torch.uint8))
    noise = images(3, s)
    assert torch.equal(A.apply(noise, rows(3, rotation=90.0)), torch.rot90(noise, 1, (1, 2)))
    assert torch.equal(A.apply(noise, rows(3, rotation=180.0)), torch.rot90(noise, 2, (1, 2)))


def test_flip_mirrors_left_right_and_comes_before_the_turn_and_shift():
    x = images(3, 20)
    assert torch.equal(A.apply(x, rows(3, flip=1.0)), torch.flip(x, [2]))
    y = A.apply(x, rows(3, flip=1.0, rotation=90.0, translate_x=2 / 20))
    assert torch.equal(y, shifted(torch.rot90(torch.flip(x, [2]), 1, (1, 2)), 2, 0))
    # flip=1.0 draws a flip for every image, flip=0 for none
    drawn = A.draw(50, torch.Generator().manual_seed(0), Augment(flip=1.0), False)
    assert torch.equal(A.apply(x[:1].expand(50, -1, -1), rows(50, flip=1.0)),
                       A.apply(x[:1].expand(50, -1, -1), rows(50, **{
                           "flip": drawn[:, A.COLUMNS.index("flip")]})))
    never = A.draw(200, torch.Generator().manual_seed(0), Augment(flip=0.0), False)
    assert not never[:, A.COLUMNS.index("flip")].any()


def test_zoom_doubles_a_centred_square():
    s = 32
    x = torch.zeros(1, s, s, dtype=torch.uint8)
    x[0, 12:20, 12:20] = 255  # 8 px about the centre (15.5)
    y = A.apply(x, rows(1, scale=2.0))
    bright = (y[0] > 127).nonzero()
    assert bright.min().item() == 8 and bright.max().item() == 23  # 16 px now
    y = A.apply(x, rows(1, scale=0.5))
    bright = (y[0] > 127).nonzero()
    assert bright[:, 0].unique().numel() == 4  # 4 px


def test_brightness_and_contrast_hand_computed():
    flat = torch.full((1, 8, 8), 100, dtype=torch.uint8)
    # contrast about the mean leaves a flat image; brightness 0.2 adds 51
    assert torch.equal(A.apply(flat, rows(1, contrast=1.5, brightness=0.2)), flat + 51)
    halves = torch.full((1, 8, 8), 50, dtype=torch.uint8)
    halves[0, :, 4:] = 150  # mean 100
    y = A.apply(halves, rows(1, contrast=1.5, brightness=0.04))  # 100 +- 75, + 10.2
    assert y[0, :, :4].unique().tolist() == [35] and y[0, :, 4:].unique().tolist() == [185]
    y = A.apply(halves, rows(1, contrast=3.0))  # 100 +- 150: clamped to the uint8 range
    assert y[0, :, :4].unique().tolist() == [0] and y[0, :, 4:].unique().tolist() == [250]
    y = A.apply(halves, rows(1, brightness=-1.0))
    assert y.unique().tolist() == [0]
    # one batch, each image its own parameters and its own mean
    both = torch.cat([flat, halves])
    y = A.apply(both, torch.cat([rows(1, brightness=0.2), rows(1, contrast=0.5)]))
    assert torch.equal(y[0], flat[0] + 51)
    assert y[1, :, :4].unique().tolist() == [75] and y[1, :, 4:].unique().tolist() == [125]


def test_drawn_parameters_lie_within_their_ranges():
    ranges = Augment(rotation=10, translate=0.05, scale=0.1, flip=0.3, brightness=0.1,
                      contrast=0.2)
    drawn = A.draw(20_000, torch.Generator().manual_seed(0), ranges, True)
    bounds = {"rotation": (-10, 10), "translate_x": (-0.05, 0.05), "translate_y": (-0.05, 0.05),
              "scale": (0.9, 1.1), "brightness": (-0.1, 0.1), "contrast": (0.8, 1.2)}
    for name, (low, high) in bounds.items():
        column = drawn[:, A.COLUMNS.index(name)]
        assert low <= column.min() and column.max() <= high, name
        width = high - low  # the whole range is used, not one value
        assert column.min() < low + 0.01 * width and column.max() > high - 0.01 * width, name
        assert column.unique().numel() > 10_000, name
    flips = drawn[:, A.COLUMNS.index("flip")]
    assert set(flips.unique().tolist()) == {0.0, 1.0}
    assert abs(flips.mean().item() - 0.3) < 0.02
    # every column drawn on its own (x and y shifts not one value)
    correlation = torch.corrcoef(drawn.T) - torch.eye(A.K)
    assert correlation.abs().max() < 0.05


def test_without_jitter_intensities_are_untouched_and_the_geometry_is_the_same():
    ranges = Augment()
    plain = A.draw(64, torch.Generator().manual_seed(3), ranges, False)
    jittered = A.draw(64, torch.Generator().manual_seed(3), ranges, True)
    assert (plain[:, 5] == 0).all() and (plain[:, 6] == 1).all()
    assert (jittered[:, 5] != 0).all() and (jittered[:, 6] != 1).all()
    assert torch.equal(plain[:, :5], jittered[:, :5])  # a seed's geometry, with or without
    x = images(64, 16)
    geometry_off = Augment(rotation=0, translate=0, scale=0)
    assert torch.equal(A.augment(x, torch.Generator().manual_seed(3), geometry_off, False), x)
    assert not torch.equal(A.augment(x, torch.Generator().manual_seed(3), geometry_off, True), x)


def test_the_grid_is_affine_grids():
    drawn = A.draw(9, torch.Generator().manual_seed(0), Augment(rotation=45, flip=0.5), True)
    theta = A.theta(drawn)
    for size in (5, 48):
        expected = F.affine_grid(theta, [9, 1, size, size], align_corners=False)
        assert torch.allclose(A.sampling_grid(theta, size), expected, atol=1e-6, rtol=0)


def test_bad_inputs_are_refused():  # bad ranges: params.validate (tests/test_options.py)
    with pytest.raises(ValueError, match="uint8"):
        A.apply(images(2).float(), rows(2))
    with pytest.raises(ValueError, match="parameters"):
        A.apply(images(2), rows(3))
