"""The two unpaired domains A and B that CycleGAN translates between, built on shared.data and shared.shapes.

    --dataset shapes                 A = filled shapes, B = the same shapes drawn as outlines
                                     (shared.shapes.make_paired_shapes: same factors, one image each; train =
                                     50,000 from --seed, test = 10,000 from shared.data's fixed SHAPES_TEST_SEED)
    --dataset mnist [--pair invert]  A = MNIST digits, B = the same digits colour-inverted (255 - x)
    --dataset mnist --pair rotate    B = the same digits rotated by 90 degrees (counter-clockwise)
    --dataset folder:PATH            PATH/trainA, PATH/trainB (training), PATH/testA, PATH/testB (held out):
                                     the horse2zebra layout of the official CycleGAN datasets, used unchanged

The built-in pairs are paired by construction (b[i] is the true translation of a[i], with the same label), so
evaluate.py can score translations against ground truth. Training never sees that pairing: train.py draws A
and B batches from two independently shuffled orders (BatchIterator seeds seed and seed + 1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from shared import shapes
from shared.data import SHAPES_SIZES, SHAPES_TEST_SEED, DataError, ImageData, load_dataset

PAIRS = {"shapes": ("outline",), "mnist": ("invert", "rotate")}  # first = default; folder: has its own B


@dataclass
class Domains:
    a: ImageData  # domain A (labels: shape class or digit where known, else zeros)
    b: ImageData  # domain B; when `paired`, b.images[i] is the true translation of a.images[i]
    paired: bool  # ground-truth counterparts exist (the built-in pairs)
    names: tuple[str, str]  # e.g. ("filled", "outline")

    @property
    def channels(self) -> int:
        return self.a.channels

    @property
    def source(self) -> str:
        return f"A = {self.names[0]}: {self.a.source}; B = {self.names[1]}: {self.b.source}"


def resolve_pair(dataset: str, pair: str) -> str:
    """The pair name for this dataset ('auto' = its default); ValueError (one line) if it has no such pair."""
    if dataset.startswith("folder:"):
        if pair not in ("auto", "folder"):
            raise ValueError(f"--pair {pair} does not apply to folder: datasets (B is PATH/trainB)")
        return "folder"
    allowed = PAIRS.get(dataset)
    if allowed is None:
        raise ValueError(f"CycleGAN has no built-in domain pair for {dataset!r}: use shapes, mnist or folder:PATH "
                         f"with trainA/ trainB/ testA/ testB/")
    if pair == "auto":
        return allowed[0]
    if pair not in allowed:
        raise ValueError(f"--pair {pair} is not a pair of {dataset}: choose {' | '.join(allowed)}")
    return pair


def load_domains(dataset: str, root: str | None, image_size: int, split: str = "train", seed: int = 0,
                 pair: str = "auto") -> Domains:
    """Domains A and B of a split (see the module docstring). Raises DataError (one line) on missing data."""
    try:
        pair = resolve_pair(dataset, pair)
    except ValueError as err:
        raise DataError(str(err)) from None
    if dataset == "shapes":
        return _shapes(image_size, split, seed)
    if dataset.startswith("folder:"):
        return _folder(Path(dataset[len("folder:"):]).expanduser(), image_size, split)
    digits = load_dataset(dataset, root, image_size, split, seed=seed)
    if pair == "invert":
        twin = 255 - digits.images
    else:  # rotate: 90 degrees counter-clockwise in the image plane
        twin = torch.rot90(digits.images, k=1, dims=(2, 3)).contiguous()
    twin_name = {"invert": "inverted", "rotate": "rotated"}[pair]
    b = replace(digits, images=twin, source=f"{twin_name} copy of the same images")
    return Domains(digits, b, paired=True, names=(dataset, f"{dataset}-{twin_name}"))


def _shapes(image_size: int, split: str, seed: int) -> Domains:
    """make_paired_shapes with shared.data's sizes and seeds: A filled, B outline, the same factors."""
    try:
        shapes.check_image_size(image_size)
    except ValueError as e:
        raise DataError(f"{e} (--image-size)") from None
    split_seed = seed if split == "train" else SHAPES_TEST_SEED
    filled, outline, labels, factors = shapes.make_paired_shapes(SHAPES_SIZES[split], image_size, seed=split_seed)
    common = dict(labels=labels, classes=list(shapes.CLASS_NAMES), factors=factors,
                  factor_names=shapes.FACTOR_NAMES, factor_sizes=shapes.FACTOR_SIZES)
    a = ImageData(filled, source=f"shapes filled, generated in memory (seed {split_seed})", **common)
    b = ImageData(outline, source=f"shapes outline, the same factors (seed {split_seed})", **common)
    return Domains(a, b, paired=True, names=("shapes-filled", "shapes-outline"))


def _folder(root: Path, image_size: int, split: str) -> Domains:
    """PATH/trainA + PATH/trainB (or testA + testB), unpaired; both brought to the same channel count."""
    names = [f"{split}A", f"{split}B"]
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        raise DataError(f"{root} has no {' or '.join(missing)}/ folder: CycleGAN's folder: layout is "
                        f"trainA/ trainB/ testA/ testB/ (the horse2zebra layout)")
    a, b = (load_dataset(f"folder:{root / n}", None, image_size) for n in names)
    if a.channels != b.channels:  # one domain grayscale, the other RGB: both RGB
        a, b = (replace(d, images=d.images.expand(-1, 3, -1, -1).contiguous()) if d.channels == 1 else d
                for d in (a, b))
    return Domains(a, b, paired=False, names=(f"{root.name}-A", f"{root.name}-B"))
