"""experiments/shapes_ablation.py: the ablated data holds the unnamed factors fixed and thins the levels it is asked
to. (conftest.py puts experiments/ on the import path.)"""
import os
import subprocess
import sys
from pathlib import Path

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


def test_one_hot_codes_every_factor_once():
    factors = shapes_ablation.ablated_factors(list(shapes.FACTOR_NAMES), 1, 200, seed=1)
    codes = shapes_ablation.one_hot(factors)
    assert codes.shape == (200, sum(shapes.FACTOR_SIZES)) and (codes.sum(1) == len(shapes.FACTOR_SIZES)).all()
    blocks = codes.split(list(shapes.FACTOR_SIZES), dim=1)
    assert torch.equal(torch.stack([b.argmax(1) for b in blocks], 1), factors)


def test_projection_discriminator_adds_the_inner_product_of_embedded_factors_and_pooled_features():
    from model import Config, Discriminator

    torch.manual_seed(0)
    D = shapes_ablation.ProjectionD(Discriminator(Config(image_size=16, channels=3, d_width=8)), y_dim=38).eval()
    x, y = torch.randn(5, 3, 16, 16), torch.rand(5, 38)
    phi = D.d.body(x).sum((2, 3))  # (5, 16): the last feature map summed over space
    expected = D.d(x) + (phi * (y @ D.embed.weight.T)).sum(1)
    assert torch.allclose(D(x, y), expected, atol=1e-5)
    assert torch.allclose(D(x, torch.zeros(5, 38)), D.d(x), atol=1e-6)  # no factors: the plain D


@pytest.mark.parametrize("mode", ["--mse", "--given-factors"])
def test_factor_modes_train_and_write_outputs_above_the_matching_real_images(tmp_path, mode, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    shapes_ablation.main([mode, "--minutes", "0.01", "--width", "8", "--batch-size", "8", "--images", "500",
                          "--out", str(out)])
    assert "steps in 0.01 minutes" in capsys.readouterr().out
    assert Image.open(out).size == (8 * 33 + 1, 16 * 33 + 1)  # 8 columns, 8 rows of outputs + 8 of real images


def test_cli_rejects_both_factor_modes(capsys):
    with pytest.raises(SystemExit) as exit_:
        shapes_ablation.main(["--mse", "--given-factors"])
    assert exit_.value.code == 2 and "choose one of" in capsys.readouterr().err


def test_snapshots_are_written_during_the_run(tmp_path, capsys):
    out = tmp_path / "grid.png"
    shapes_ablation.main(["--minutes", "0.04", "--snapshot-minutes", "0.01", "--width", "8", "--batch-size", "8",
                          "--images", "500", "--out", str(out)])
    written = {p.name for p in tmp_path.iterdir()}  # snapshots after 0.6, 1.2 and 1.8 s of a 2.4 s run
    assert {"grid.png", "grid_0.01min.png", "grid_0.02min.png"} <= written
    assert written <= {"grid.png", "grid_0.01min.png", "grid_0.02min.png", "grid_0.03min.png"}
    assert "grid_0.02min.png" in capsys.readouterr().out


def test_runs_as_a_script_from_inside_the_folder():
    """`python experiments/shapes_ablation.py` from DCGAN/ finds model.py in the folder above (no conftest)."""
    here = Path(__file__).resolve().parents[1]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "experiments/shapes_ablation.py", "--vary", "shape,hue"], cwd=here,
                         capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 2 and "unknown factors ['hue']" in res.stderr, res.stderr[-2000:]
