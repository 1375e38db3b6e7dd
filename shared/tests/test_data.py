"""Tests for shared/shapes.py and shared/data.py: CPU, seeded, no network, no downloaded data."""

import gzip
import socket
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from shared import shapes
from shared.data import (DATASETS, BatchIterator, DataError, ImageData, check_dataset_name, load_dataset,
                         to_float, to_uint8)

torch.set_num_threads(1)

BG = torch.tensor(shapes.BACKGROUND, dtype=torch.float32).view(3, 1, 1)
SHAPE, COLOUR, SCALE, ROTATION, X, Y = range(6)


def factors_of(*rows: tuple[int, ...]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def coverage(images: torch.Tensor, colour: int) -> torch.Tensor:
    """Per-pixel coverage in [0, 1] recovered from uint8 (n, 3, S, S) images of one colour."""
    fg = torch.tensor(shapes.COLOURS[colour], dtype=torch.float32).view(3, 1, 1)
    return ((images.float() - BG) / (fg - BG)).mean(dim=-3)  # (n, S, S)


def centroid(cov: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted (x, y) centroid of (n, S, S) maps, in pixels."""
    coords = torch.arange(cov.shape[-1], dtype=torch.float32) + 0.5
    mass = cov.sum(dim=(-2, -1))
    return torch.stack([(cov.sum(-2) * coords).sum(-1) / mass, (cov.sum(-1) * coords).sum(-1) / mass], -1)


# ----------------------------------------------------------------------------- shapes


def test_shapes_deterministic_per_seed_and_different_across_seeds():
    a_images, a_labels, a_factors = shapes.make_shapes(64, seed=3)
    b_images, b_labels, b_factors = shapes.make_shapes(64, seed=3)
    c_images, _, c_factors = shapes.make_shapes(64, seed=4)
    assert torch.equal(a_images, b_images) and torch.equal(a_factors, b_factors)
    assert not torch.equal(a_factors, c_factors)
    assert not torch.equal(a_images, c_images)


def test_shapes_types_ranges_and_labels():
    images, labels, factors = shapes.make_shapes(500, seed=0)
    assert images.shape == (500, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (500,) and labels.dtype == torch.int64
    assert factors.shape == (500, len(shapes.FACTOR_NAMES)) and factors.dtype == torch.int64
    assert len(shapes.FACTOR_NAMES) == len(shapes.FACTOR_SIZES)
    assert shapes.FACTOR_NAMES[SHAPE] == "shape" and shapes.CLASS_NAMES == ("square", "circle", "triangle")
    assert (factors >= 0).all() and (factors < torch.tensor(shapes.FACTOR_SIZES)).all()
    assert torch.equal(labels, factors[:, SHAPE])
    for k, size in enumerate(shapes.FACTOR_SIZES):  # 500 uniform draws hit every level
        assert set(factors[:, k].tolist()) == set(range(size)), shapes.FACTOR_NAMES[k]


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_every_factor_changes_the_image(shape):
    base = [shape, 1, 2, 3, 3, 3]
    reference = shapes.render(factors_of(base))
    for k, size in enumerate(shapes.FACTOR_SIZES):
        if k == ROTATION and shapes.CLASS_NAMES[shape] == "circle":
            continue  # a circle is rotation-invariant (documented)
        changed = list(base)
        changed[k] = (base[k] + 1) % size
        assert not torch.equal(shapes.render(factors_of(changed)), reference), shapes.FACTOR_NAMES[k]


def test_position_moves_the_centroid_and_scale_grows_the_area():
    levels = torch.arange(8)
    along_x = factors_of(*[(0, 0, 2, 0, int(i), 4) for i in levels])
    along_y = factors_of(*[(2, 0, 2, 0, 4, int(i)) for i in levels])
    cx = centroid(coverage(shapes.render(along_x), 0))
    cy = centroid(coverage(shapes.render(along_y), 0))
    assert (cx[1:, 0] > cx[:-1, 0] + 0.5).all() and (cx[:, 1] - cx[0, 1]).abs().max() < 0.05
    assert (cy[1:, 1] > cy[:-1, 1] + 0.5).all() and (cy[:, 0] - cy[0, 0]).abs().max() < 0.05
    for shape in range(3):
        grow = factors_of(*[(shape, 0, s, 0, 4, 4) for s in range(shapes.FACTOR_SIZES[SCALE])])
        area = coverage(shapes.render(grow), 0).sum(dim=(-2, -1))
        assert (area[1:] > area[:-1]).all(), shapes.CLASS_NAMES[shape]


def test_square_circle_triangle_have_distinct_silhouettes():
    images = shapes.render(factors_of((0, 0, 4, 0, 4, 4), (1, 0, 4, 0, 4, 4), (2, 0, 4, 0, 4, 4)))
    cov = coverage(images, 0)
    assert (cov[0] - cov[1]).abs().sum() > 10 and (cov[0] - cov[2]).abs().sum() > 10
    assert cov[0].sum() > cov[2].sum()  # same circumradius: the square covers more than the triangle


def test_antialiased_edges():
    images = shapes.render(factors_of((1, 0, 4, 0, 3, 3)))  # a red circle
    red = images[0, 0].float()
    partial = (red > shapes.BACKGROUND[0]) & (red < shapes.COLOURS[0][0])
    assert partial.sum() >= 8  # a circle's whole rim is partially covered


@pytest.mark.parametrize("image_size", [16, 32, 64, 128])
def test_sizes_and_shapes_stay_inside_the_frame(image_size):
    last = [size - 1 for size in shapes.FACTOR_SIZES]
    rows = [(s, 0, last[SCALE], r, x, y) for s in range(3) for r in range(0, 8, 2)
            for x in (0, last[X]) for y in (0, last[Y])]  # largest scale at the extreme positions
    images = shapes.render(factors_of(*rows), image_size)
    assert images.shape == (len(rows), 3, image_size, image_size)
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], -1)
    assert (border == torch.tensor(shapes.BACKGROUND, dtype=torch.uint8).view(1, 3, 1)).all()
    assert (coverage(images, 0).sum(dim=(-2, -1)) > 0.05 * image_size**2).all()  # something is drawn


@pytest.mark.parametrize("bad_size", [8, 24, 33, 256])
def test_other_sizes_raise(bad_size):
    with pytest.raises(ValueError, match="power of two"):
        shapes.render(factors_of((0, 0, 0, 0, 0, 0)), bad_size)
    with pytest.raises(ValueError):
        shapes.make_shapes(4, bad_size)


def test_invalid_factors_and_style_raise():
    with pytest.raises(ValueError):
        shapes.render(factors_of((3, 0, 0, 0, 0, 0)))  # only 3 shapes
    with pytest.raises(ValueError):
        shapes.render(factors_of((0, 0, 0, 0, 0, 0)), style="dotted")


def test_paired_domains_share_factors_and_b_is_the_outline_of_a():
    domain_a, domain_b, labels, factors = shapes.make_paired_shapes(64, image_size=32, seed=5)
    images, same_labels, same_factors = shapes.make_shapes(64, image_size=32, seed=5)
    assert torch.equal(factors, same_factors) and torch.equal(labels, same_labels)
    assert torch.equal(domain_a, images)  # domain A is the filled rendering
    assert torch.equal(domain_b, shapes.render(factors, 32, style="outline"))
    assert all(not torch.equal(a, b) for a, b in zip(domain_a, domain_b))
    cov_a = torch.stack([coverage(a[None], int(c))[0] for a, c in zip(domain_a, factors[:, COLOUR])])
    cov_b = torch.stack([coverage(b[None], int(c))[0] for b, c in zip(domain_b, factors[:, COLOUR])])
    assert (cov_b <= cov_a + 0.01).all()  # the outline lies inside the filled shape
    rim = (cov_a > 0.02) & (cov_a < 0.98)
    assert (cov_b[rim] - cov_a[rim]).abs().max() < 0.01  # and equals it on the anti-aliased edge
    assert (cov_b.sum(dim=(-2, -1)) < 0.9 * cov_a.sum(dim=(-2, -1))).all()
    assert (centroid(cov_a) - centroid(cov_b)).abs().max() < 0.3


def test_large_outline_is_hollow():
    factors = factors_of((0, 2, 4, 0, 4, 4))  # largest square near the centre
    filled, outline = shapes.render(factors, 64), shapes.render(factors, 64, style="outline")
    centre = coverage(torch.cat([filled, outline]), 2)[:, 30:34, 30:34]
    assert (centre[0] > 0.99).all() and (centre[1] < 0.01).all()


# ----------------------------------------------------------------------------- load_dataset: shapes / names


def test_load_shapes_train_and_test_splits():
    train = load_dataset("shapes", image_size=16, split="train", seed=0)
    test = load_dataset("shapes", image_size=16, split="test", seed=0)
    assert len(train) == 50_000 and len(test) == 10_000
    assert train.images.shape[1:] == (3, 16, 16) and train.channels == 3 and train.num_classes == 3
    assert train.factor_names == shapes.FACTOR_NAMES and train.factor_sizes == shapes.FACTOR_SIZES
    assert torch.equal(train.labels, train.factors[:, SHAPE])
    assert not torch.equal(train.factors[:10_000], test.factors)
    with pytest.raises(DataError, match="power of two"):
        load_dataset("shapes", image_size=48)


def test_check_dataset_name():
    for name in DATASETS:
        assert check_dataset_name(name) == name
    assert check_dataset_name("MNIST") == "mnist"
    assert check_dataset_name("folder:/some/Path") == "folder:/some/Path"
    for bad in ("imagenet", "folder:", ""):
        with pytest.raises(ValueError, match="unknown dataset"):
            check_dataset_name(bad)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def test_to_float_to_uint8_round_trip():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_float(values)
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(to_uint8(x), values)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 0.0, 7.0])), torch.tensor([0, 128, 255], dtype=torch.uint8))


# ----------------------------------------------------------------------------- BatchIterator


def indexed_data(n: int) -> ImageData:
    """n tiny images whose label is their index, so batches reveal which samples they hold."""
    return ImageData(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), [])


def test_batches_cover_each_index_once_per_epoch_and_reshuffle():
    it = BatchIterator(indexed_data(105), batch_size=10, seed=1)
    assert it.batches_per_epoch == 10  # the last partial batch is dropped
    epochs = [torch.cat([next(it)[1] for _ in range(10)]) for _ in range(2)]
    for seen in epochs:
        assert len(seen) == 100 and len(set(seen.tolist())) == 100
    assert not torch.equal(epochs[0], epochs[1])
    assert it.state_dict() == {"epoch": 1, "position": 10}
    images, labels = next(it)
    assert images.shape == (10, 1, 2, 2) and images.dtype == torch.uint8 and it.state_dict()["epoch"] == 2


def test_two_ranks_get_disjoint_shards_matching_distributed_sampler():
    data = indexed_data(101)
    shards = []
    for rank in range(2):
        it = BatchIterator(data, batch_size=10, seed=7, rank=rank, world_size=2)
        shard = torch.cat([next(it)[1] for _ in range(it.batches_per_epoch)])
        sampler = DistributedSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=7, drop_last=True)
        assert shard.tolist() == list(sampler)[:len(shard)]
        shards.append(set(shard.tolist()))
    assert len(shards[0]) == len(shards[1]) == 50 and not shards[0] & shards[1]


def test_resume_reproduces_the_following_batches():
    data = indexed_data(64)
    it = BatchIterator(data, batch_size=8, seed=3)
    for _ in range(11):  # past the first epoch boundary
        next(it)
    state = it.state_dict()
    expected = [next(it)[1] for _ in range(9)]
    resumed = BatchIterator(data, batch_size=8, seed=3)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, next(resumed)[1]) for a in expected)
    fresh = BatchIterator(data, batch_size=8, seed=3)
    assert not torch.equal(next(fresh)[1], expected[0])


def test_batches_do_not_consume_the_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    it = BatchIterator(indexed_data(30), batch_size=4, seed=0)
    for _ in range(20):
        next(it)
    assert torch.equal(before, torch.get_rng_state())


def test_batch_larger_than_shard_raises():
    with pytest.raises(DataError, match="--batch-size"):
        BatchIterator(indexed_data(10), batch_size=6, world_size=2)


# ----------------------------------------------------------------------------- folder:PATH


def save(path, size, colour, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def test_class_folders_with_a_corrupt_file(tmp_path, capsys):
    save(tmp_path / "cats" / "a.png", (20, 30), (200, 10, 10))
    save(tmp_path / "cats" / "b.jpg", (40, 40), (200, 10, 10))
    save(tmp_path / "dogs" / "c.png", (64, 48), (10, 10, 200))
    save(tmp_path / "dogs" / "deeper" / "d.bmp", (17, 23), (10, 10, 200))
    (tmp_path / "dogs" / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert len(data) == 4 and data.images.shape == (4, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.classes == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 1, 1]
    red, blue = torch.tensor([200, 10, 10]).view(3, 1, 1), torch.tensor([10, 10, 200]).view(3, 1, 1)
    assert ((data.images[:2].int() - red).abs() <= 3).all()  # JPEG allows small errors
    assert ((data.images[2:].int() - blue).abs() <= 3).all()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "skipped 1 unreadable" in warnings[0]


def test_flat_folder_is_unlabelled_and_centre_cropped(tmp_path):
    stripes = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 x 20: blue | red | green; the crop keeps x 10..30
    stripes[:, :6] = (0, 0, 255)
    stripes[:, 6:34] = (255, 0, 0)
    stripes[:, 34:] = (0, 255, 0)
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    save(tmp_path / "tall.png", (10, 50), (0, 255, 0))
    (tmp_path / "empty_subfolder").mkdir()  # a subfolder without images is not a class
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert len(data) == 2 and data.classes == [] and data.num_classes == 0
    assert data.labels.tolist() == [0, 0]
    assert (data.images[1, 0] > 250).all() and (data.images[1, 1:] < 5).all()  # "wide.png": the red middle


def test_all_grayscale_folder_keeps_one_channel(tmp_path):
    save(tmp_path / "g1.png", (8, 8), 30, mode="L")
    save(tmp_path / "g2.png", (32, 32), 220, mode="L")
    data = load_dataset(f"folder:{tmp_path}", image_size=16)
    assert data.images.shape == (2, 1, 16, 16) and data.channels == 1
    assert sorted(data.images.view(2, -1)[:, 0].tolist()) == [30, 220]


def test_missing_empty_or_unreadable_folder_raises(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DataError, match="no image files"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="could be read"):
        load_dataset(f"folder:{tmp_path}")


# ----------------------------------------------------------------------------- torchvision datasets


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a socket."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write_idx(path, array: np.ndarray, compress: bool = False):
    """Write an MNIST idx file (uint8 data)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def test_missing_mnist_names_the_path_and_the_flag(tmp_path, no_network):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "--data-root" in message and "--download" in message and "\n" not in message
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("fashion-mnist", root=None)


def test_offline_download_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download mnist") as info:
        load_dataset("mnist", root=str(tmp_path), download=True)
    assert "\n" not in str(info.value)


def test_fake_mnist_loads_resized_with_gz_files(tmp_path, no_network):
    raw = tmp_path / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    train_x = np.zeros((12, 28, 28), dtype=np.uint8)
    train_x[:, 4:24, 4:24] = rng.integers(100, 256, size=(12, 1, 1))  # a flat square per image
    train_y = np.arange(12) % 10
    write_idx(raw / "train-images-idx3-ubyte", train_x, compress=True)  # only the .gz exists
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", train_x[:5])
    write_idx(raw / "t10k-labels-idx1-ubyte", train_y[:5])
    data = load_dataset("mnist", root=str(tmp_path), image_size=32)
    assert data.images.shape == (12, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == train_y.tolist() and data.num_classes == 10
    assert torch.equal(data.images[:, 0, 16, 16], torch.from_numpy(train_x[:, 14, 14]))  # flat centre kept
    assert (data.images[:, :, 0, 0] == 0).all()
    assert len(load_dataset("mnist", root=str(tmp_path), split="test")) == 5
