"""The two domains: shapes filled vs outline (same factors), MNIST vs its inverted / rotated twin, folder pairs."""
import shutil

import pytest
import torch
from PIL import Image

import domains
import train
from shared import shapes
from shared.data import SHAPES_TEST_SEED, DataError, load_dataset


@pytest.fixture
def small_shapes(monkeypatch):
    """300 training / 200 test shapes instead of 50,000 / 10,000 (the same dict shared.data reads)."""
    monkeypatch.setitem(domains.SHAPES_SIZES, "train", 300)
    monkeypatch.setitem(domains.SHAPES_SIZES, "test", 200)


def test_shapes_domains_are_filled_and_outline_renderings_of_the_same_factors(small_shapes):
    d = domains.load_domains("shapes", None, 16, "train", seed=3)
    filled, outline, labels, factors = shapes.make_paired_shapes(300, 16, seed=3)
    assert torch.equal(d.a.images, filled) and torch.equal(d.b.images, outline)
    assert torch.equal(d.a.labels, labels) and torch.equal(d.b.factors, factors) and d.paired
    assert torch.equal(d.a.images, load_dataset("shapes", None, 16, "train", seed=3).images)  # shared's shapes
    assert not torch.equal(d.a.images, d.b.images)
    test = domains.load_domains("shapes", None, 16, "test", seed=3)  # the fixed test seed, whatever --seed is
    assert torch.equal(test.a.factors, shapes.make_paired_shapes(200, 16, seed=SHAPES_TEST_SEED)[3])
    assert str(SHAPES_TEST_SEED) in test.a.source


@pytest.mark.parametrize("pair", ["invert", "rotate"])
def test_mnist_twins_are_inverted_or_rotated_copies_with_the_same_labels(pair):
    d = domains.load_domains("mnist", None, 16, "test", pair=pair)
    a, b = d.a.images, d.b.images
    assert len(a) == len(b) == 10_000 and torch.equal(d.a.labels, d.b.labels) and d.paired
    expected = 255 - a if pair == "invert" else torch.rot90(a, 1, dims=(2, 3))
    assert torch.equal(b, expected)
    if pair == "rotate":  # the top row of B is the right-hand column of A
        assert torch.equal(b[:, :, 0, :], a[:, :, :, -1])


def test_pairs_are_checked_per_dataset():
    assert domains.resolve_pair("mnist", "auto") == "invert" and domains.resolve_pair("shapes", "auto") == "outline"
    for dataset, pair in [("mnist", "outline"), ("shapes", "invert"), ("cifar10", "auto"), ("folder:x", "rotate")]:
        with pytest.raises(ValueError):
            domains.resolve_pair(dataset, pair)
    with pytest.raises(DataError, match="--pair"):
        domains.load_domains("mnist", None, 16, pair="flip")


def folder_pair(root, n=5, gray_b=False):
    for part in ("trainA", "trainB", "testA", "testB"):
        (root / part).mkdir(parents=True)
        for i in range(n):
            shape = (20, 20) if gray_b and part.endswith("B") else (20, 20, 3)
            Image.fromarray(torch.randint(0, 256, shape, dtype=torch.uint8).numpy()).save(root / part / f"{i}.png")
    return root


def test_a_horse2zebra_style_folder_loads_train_and_test_domains(tmp_path):
    root = folder_pair(tmp_path / "pair", gray_b=True)
    train_split = domains.load_domains(f"folder:{root}", None, 16, "train")
    test_split = domains.load_domains(f"folder:{root}", None, 16, "test")
    for d in (train_split, test_split):
        assert len(d.a) == len(d.b) == 5 and not d.paired
        assert d.a.channels == d.b.channels == 3  # the grayscale B is brought to RGB
    assert "trainA" in train_split.source and "testB" in test_split.source
    shutil.rmtree(root / "testB")
    with pytest.raises(DataError, match="testB.*trainA/ trainB/ testA/ testB/"):
        domains.load_domains(f"folder:{root}", None, 16, "test")


def test_training_draws_a_and_b_in_independent_orders(small_shapes):
    d = domains.load_domains("shapes", None, 16, "train")
    batches = train.PairedBatches(d, batch_size=10, seed=0, rank=0, world_size=1)
    order_a, order_b = batches.a._epoch_order(), batches.b._epoch_order()
    assert sorted(order_a.tolist()) == sorted(order_b.tolist()) == list(range(300))
    assert (order_a == order_b).float().mean() < 0.05  # a pair is drawn together only by chance
    a, b = next(batches)
    assert torch.equal(a, d.a.images[order_a[:10]]) and torch.equal(b, d.b.images[order_b[:10]])
    next(batches)
    state = batches.state_dict()
    again = train.PairedBatches(d, batch_size=10, seed=0, rank=0, world_size=1)
    again.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(next(batches), next(again)))
