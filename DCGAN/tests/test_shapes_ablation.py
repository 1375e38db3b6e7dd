"""shapes_ablation.py: the ablated data holds the unnamed factors fixed and thins the levels it is asked to."""
import pytest
import torch

import shapes_ablation
from shapes_ablation import ablated_shapes
from shared import shapes


def distinct(images: torch.Tensor) -> int:
    return len(torch.unique(images.flatten(1), dim=0))


def test_only_the_named_factors_vary():
    # square and triangle at 8 rotations each, the circle ignores rotation: 8 + 8 + 1 images
    assert distinct(ablated_shapes(["shape", "rotation"], 1, 3000, seed=0, image_size=16)) == 17
    assert distinct(ablated_shapes(["shape", "colour", "scale"], 1, 3000, seed=0, image_size=16)) == 90
    one = ablated_shapes(["colour"], 1, 500, seed=0, image_size=16)
    middle = torch.tensor([[1, 3, 2, 4, 4, 4]])  # shape, scale, rotation, x, y at FACTOR_SIZES // 2
    assert distinct(one) == 6 and shapes.render(middle, 16)[0].tolist() in [im.tolist() for im in one]


def test_every_keeps_every_kth_level_of_the_continuous_factors():
    full = distinct(ablated_shapes(list(shapes.FACTOR_NAMES), 1, 100_000, seed=0, image_size=16))
    half = distinct(ablated_shapes(list(shapes.FACTOR_NAMES), 2, 100_000, seed=0, image_size=16))
    # 3 shapes x 6 colours x 3 scales x 4 x 4 positions, rotations 4 for square/triangle, 1 for the circle: 2,592
    assert half == 2592 and full > 3 * half


def test_cli_rejects_an_unknown_factor(capsys):
    with pytest.raises(SystemExit) as exit_:
        shapes_ablation.main(["--vary", "shape,hue"])
    assert exit_.value.code == 2 and "unknown factors ['hue']" in capsys.readouterr().err
