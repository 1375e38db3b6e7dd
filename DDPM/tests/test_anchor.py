"""experiments/anchor.py without the anchor installed: the PNG export is the pixels train.py trains on, the
wall-clock stop only ends the anchor's own loop, and its samples reach the harness in [-1, 1], reproducibly."""
import types

import numpy as np
import torch
from PIL import Image

import anchor
from shared.data import load_dataset


def test_export_writes_the_training_pixels_as_pngs(tmp_path):
    n = anchor.export(tmp_path / "png", dataset="shapes", image_size=16, limit=40)
    data = load_dataset("shapes", None, 16, "train", seed=0)
    files = sorted((tmp_path / "png").glob("*.png"))
    assert n == 40 == len(files)
    for i in (0, n // 2, n - 1):
        img = np.asarray(Image.open(files[i]))  # (H, W, 3) uint8 for RGB shapes
        assert np.array_equal(img, data.images[i].permute(1, 2, 0).numpy())


def test_export_of_grey_mnist_is_one_channel(tmp_path):
    assert anchor.export(tmp_path / "png", dataset="mnist", image_size=8, limit=3) == 3
    first = Image.open(tmp_path / "png" / "00000.png")
    assert first.mode == "L" and first.size == (8, 8)
    assert np.array_equal(np.asarray(first), load_dataset("mnist", None, 8, "train").images[0, 0].numpy())


def test_the_wall_clock_stop_ends_the_loop_at_the_current_step_and_keeps_the_update(monkeypatch):
    calls = []
    trainer = types.SimpleNamespace(step=0, train_num_steps=700000, ema=types.SimpleNamespace(update=lambda: calls.append(1)))
    clock = iter([100.0, 150.0, 200.0])  # set up at 100; 150 is inside a 60 s budget, 200 past it
    monkeypatch.setattr(anchor.time, "time", lambda: next(clock))
    anchor.stop_after(trainer, seconds=60)
    trainer.step = 5
    trainer.ema.update()
    assert trainer.train_num_steps == 700000 and calls == [1]
    trainer.step = 9
    trainer.ema.update()
    assert trainer.train_num_steps == 9 and calls == [1, 1]  # its `while step < train_num_steps` now ends


def test_anchor_samples_reach_the_harness_in_minus_one_to_one_reproducibly():
    class Fake:
        def __init__(self):
            self.batches = []

        def sample(self, batch_size):
            self.batches.append(batch_size)
            return torch.rand(batch_size, 1, 4, 4)  # the anchor returns [0, 1]

    fake = Fake()
    draw = anchor.anchor_sampler(fake, batch=4)
    a = draw(10, torch.Generator().manual_seed(3))
    b = draw(10, torch.Generator().manual_seed(3))
    assert a.shape == (10, 1, 4, 4) and fake.batches == [4, 4, 2, 4, 4, 2]
    assert a.min() >= -1 and a.max() <= 1 and a.min() < -0.5 and a.max() > 0.5
    assert torch.equal(a, b)
