"""Dataset loading for every model: whole datasets as uint8 tensors in memory, batches by indexing.

Datasets (`--dataset`):
  shapes         the embedded procedural dataset (shared/shapes.py), no files needed. train = 50,000
                 images from `seed`; test = 10,000 images from the fixed seed SHAPES_TEST_SEED. Labels
                 are the shape class; the generative factors come along for disentanglement metrics.
  mnist          with no `root`: the copy embedded in this package (shared/mnist/, see its README):
                 5,000 of the 60,000 training images (500 per class) and the 10,000 test images,
                 read offline. With `root` (--data-root): torchvision's files under it (the full
                 60,000 when they are the official files).
  mnist, fashion-mnist, cifar10
                 torchvision's files under `root` (--data-root); nothing is downloaded unless
                 download=True. Grayscale stays 1 channel. Resized with antialiased bilinear
                 interpolation on the whole tensor (MNIST 28 -> 32).
  folder:PATH    every image file under PATH, recursively. If PATH has subfolders that contain images,
                 they are ImageFolder-style classes (sorted names -> labels 0..C-1) and images directly
                 in PATH are ignored; otherwise the set is unlabelled (labels all 0, classes []). Each
                 image is resized (shorter side, bicubic) and centre-cropped to image_size x image_size
                 once, at load time. 1 channel if every file is stored as grayscale (PIL modes 1, L,
                 LA, I;16, I, F), else RGB. 16-bit and 32-bit grey is scaled to 8 bits (65535 -> 255);
                 transparent pixels are composited onto ALPHA_BACKGROUND (white), never shown with
                 their hidden colour. Images upscaled more than 2x get one warning with a count.
                 Hidden files and folders are skipped; unreadable files are skipped with one warning
                 line on stderr that names the first few. A folder has no held-out part: `split` is
                 ignored, so point folder: at a separate folder to evaluate on held-out images.

Failures a user can fix (missing files, no network, bad folder) raise DataError with one line.
"""

from __future__ import annotations

import gzip
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from shared import shapes


class DataError(Exception):
    """One-line, user-facing message; train.py prints it and exits with code 2."""


DATASETS = ("shapes", "mnist", "fashion-mnist", "cifar10")  # plus "folder:PATH"
SPLITS = ("train", "test")
SHAPES_SIZES = {"train": 50_000, "test": 10_000}
SHAPES_TEST_SEED = 0x5EED_7E57  # fixed: every run evaluates against the same shapes test set
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
GRAYSCALE_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel: scaled to 0..255
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
UPSCALE_WARNING = 2.0  # warn (once, with a count) about images whose shorter side is upscaled more than this
SKIPPED_NAMED = 3  # the skipped-files warning names this many of them
EMBEDDED_MNIST = Path(__file__).resolve().parent / "mnist"  # gzip IDX files, package data (see its README)
MNIST_TRAIN_FULL = 60_000
RESIZE_CHUNK = 4096  # images per interpolate call
DOWNLOAD_TIMEOUT_S = 60

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
# name -> (torchvision class name, folder under root that holds the files, files, folder to name in messages)
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", MNIST_FILES, "MNIST/"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", MNIST_FILES, "FashionMNIST/"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", CIFAR10_FILES, "cifar-10-batches-py/"),
}


@dataclass
class ImageData:
    """A whole dataset in memory, already at the training resolution."""
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64; zeros if the dataset has no labels
    classes: list[str]  # class names ([] if unlabelled)
    factors: torch.Tensor | None = None  # (N, K) int64 generative factor levels, shapes only
    factor_names: tuple[str, ...] | None = None
    factor_sizes: tuple[int, ...] | None = None
    source: str = ""  # where the images came from, for the run log and config.json

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must have shape ({len(self.images)},), got {tuple(self.labels.shape)}")

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.images.shape[0]


def check_dataset_name(name: str) -> str:
    """Return the canonical dataset name, or raise ValueError with a one-line message."""
    if name.lower() in DATASETS:
        return name.lower()
    if name.startswith("folder:") and len(name) > len("folder:"):
        return name
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or folder:PATH")


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (move to the device first: uint8 is 4x less to copy)."""
    return images_uint8.float() / 127.5 - 1.0


def to_uint8(images_float: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clamped and rounded; inverse of to_float."""
    return ((images_float.detach().float() + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8)


def load_dataset(name: str, root: str | None = None, image_size: int = 32, split: str = "train",
                 download: bool = False, seed: int = 0) -> ImageData:
    """Load a whole dataset split as uint8 tensors at image_size (see the module docstring)."""
    try:
        name = check_dataset_name(name)
    except ValueError as e:
        raise DataError(str(e)) from None
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image size must be a positive integer, got {image_size!r}")
    if name == "shapes":
        return _load_shapes(image_size, split, seed)
    if name.startswith("folder:"):
        return _load_folder(name[len("folder:"):], image_size)
    if name == "mnist" and not root:
        return load_embedded_mnist(image_size, split)
    return _load_torchvision(name, root, image_size, split, download)


def _load_shapes(image_size: int, split: str, seed: int) -> ImageData:
    """The procedural shapes dataset; test uses a fixed seed so it differs from train."""
    try:
        shapes.check_image_size(image_size)
    except ValueError as e:
        raise DataError(f"{e} (--image-size)") from None
    split_seed = seed if split == "train" else SHAPES_TEST_SEED
    images, labels, factors = shapes.make_shapes(SHAPES_SIZES[split], image_size, seed=split_seed)
    return ImageData(images, labels, list(shapes.CLASS_NAMES), factors,
                     shapes.FACTOR_NAMES, shapes.FACTOR_SIZES,
                     source=f"shapes, generated in memory (seed {split_seed})")


MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
                 "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]  # torchvision's names


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims, big-endian uint8 data), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def load_embedded_mnist(image_size: int, split: str) -> ImageData:
    """The MNIST copy shipped with the package (no files needed): 5,000 training / 10,000 test images."""
    prefix = "train" if split == "train" else "t10k"
    try:
        images = read_idx(EMBEDDED_MNIST / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(EMBEDDED_MNIST / f"{prefix}-labels-idx1-ubyte.gz")
    except OSError as e:
        raise DataError(f"the embedded MNIST copy under {EMBEDDED_MNIST} is missing ({e.strerror}); "
                        f"reinstall the project or pass --data-root with torchvision's MNIST/") from None
    n = len(images)
    of = f" of the {MNIST_TRAIN_FULL:,} training images" if split == "train" else " test images"
    return ImageData(resize_uint8(torch.from_numpy(images.copy()).unsqueeze(1), image_size),
                     torch.from_numpy(labels.astype(np.int64)), list(MNIST_CLASSES),
                     source=f"embedded MNIST copy ({EMBEDDED_MNIST}): {n:,}{of}")


def resize_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a uint8 (N, C, H, W) tensor to (N, C, S, S), in chunks."""
    if images.shape[-2:] == (image_size, image_size):
        return images.contiguous()
    out = torch.empty(*images.shape[:2], image_size, image_size, dtype=torch.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start:start + RESIZE_CHUNK].float()
        chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        out[start:start + RESIZE_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------- torchvision datasets

def _first_missing_file(name: str, root: Path) -> Path | None:
    """The first expected raw file that is absent; MNIST-style .gz copies are decompressed in place."""
    _, subdir, files, _ = TORCHVISION[name]
    for filename in files:
        path = root / subdir / filename
        gz = path.with_name(filename + ".gz")
        if not path.is_file() and name != "cifar10" and gz.is_file():
            with gzip.open(gz, "rb") as src, open(path, "wb") as dst:  # what torchvision's download does
                shutil.copyfileobj(src, dst)
        if not path.is_file():
            return path
    return None


def _construct(name: str, root: Path, train: bool, download: bool):
    """Build the torchvision dataset, turning any failure (e.g. offline download) into one DataError line."""
    import torchvision.datasets  # deferred: importing torchvision costs ~1 s and shapes never needs it

    cls = getattr(torchvision.datasets, TORCHVISION[name][0])
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # offline downloads can otherwise hang
    try:
        return cls(str(root), train=train, download=download)
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError, ... with long messages
        lines = str(e).strip().splitlines() or [type(e).__name__]
        verb = "download" if download else "load"
        raise DataError(f"could not {verb} {name} into {root}: {lines[0][:200]}") from None
    finally:
        socket.setdefaulttimeout(old_timeout)


def _load_torchvision(name: str, root: str | None, image_size: int, split: str,
                      download: bool) -> ImageData:
    """MNIST / FashionMNIST / CIFAR10 from torchvision's files, as uint8 tensors."""
    folder = TORCHVISION[name][3]
    if root is None:
        raise DataError(f"{name} needs --data-root: the folder that holds {folder} (add --download to fetch it)")
    root_path = Path(root).expanduser().resolve()
    try:
        missing = _first_missing_file(name, root_path)
    except OSError as e:
        raise DataError(f"could not read {name} under {root_path}: {e}") from None
    if missing is not None and not download:
        raise DataError(f"{name} not found: expected {missing}. Point --data-root at the folder "
                        f"that holds {folder}, or add --download to fetch it.")
    ds = _construct(name, root_path, split == "train", download)
    data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)  # (N, C, H, W)
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return ImageData(resize_uint8(images, image_size), labels, list(ds.classes),
                     source=f"torchvision {name} files under {root_path}: {len(labels):,} {split} images")


# ----------------------------------------------------------------------------- folder:PATH

def _image_files(folder: Path) -> list[Path]:
    """Image files under folder, recursively, sorted; hidden files and folders skipped."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _list_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, classes): ImageFolder-style if subfolders hold images, else unlabelled."""
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_files = [(d.name, _image_files(d)) for d in subdirs]
    class_files = [(c, files) for c, files in class_files if files]
    if not class_files:
        files = _image_files(folder)
        return files, [0] * len(files), []
    top_level = [p for p in folder.iterdir()
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    if top_level:
        print(f"warning: ignored {len(top_level)} image files directly in {folder} "
              f"(only images inside its class subfolders are used)", file=sys.stderr)
    files = [f for _, fs in class_files for f in fs]
    labels = [label for label, (_, fs) in enumerate(class_files) for _ in fs]
    return files, labels, [c for c, _ in class_files]


def _to_rgb(img) -> "Image.Image":
    """Any PIL image -> 8-bit RGB: wide grey scaled to 8 bits, transparency composited onto ALPHA_BACKGROUND."""
    from PIL import Image

    if img.mode in WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        top = 1.0 if img.mode == "F" and values.max(initial=0) <= 1.0 else 255.0 if img.mode == "F" else 65535.0
        return Image.fromarray(np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info) or \
            (img.mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _read_image(path: Path, image_size: int) -> tuple[torch.Tensor, bool, float] | None:
    """(uint8 (3, S, S) resized + centre-cropped, is_grayscale, upscale factor), or None if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            grayscale = img.mode in GRAYSCALE_MODES
            img = _to_rgb(ImageOps.exif_transpose(img))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    w, h = img.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.array(img)).permute(2, 0, 1), grayscale, scale


def _load_folder(spec: str, image_size: int) -> ImageData:
    """Every readable image under a folder, as one uint8 tensor (the only per-image PIL work)."""
    folder = Path(spec).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder} (from --dataset folder:{spec})")
    files, labels, classes = _list_folder(folder)
    if not files:
        raise DataError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    images, kept, grayscale, skipped, upscaled = [], [], [], [], 0
    for path, label in zip(files, labels):
        result = _read_image(path, image_size)
        if result is None:
            skipped.append(path)
            continue
        images.append(result[0])
        grayscale.append(result[1])
        kept.append(label)
        upscaled += result[2] > UPSCALE_WARNING
    if skipped:
        named = ", ".join(str(p.relative_to(folder)) for p in skipped[:SKIPPED_NAMED])
        more = f" and {len(skipped) - SKIPPED_NAMED} more" if len(skipped) > SKIPPED_NAMED else ""
        print(f"warning: skipped {len(skipped)} unreadable image files in {folder}: {named}{more}", file=sys.stderr)
    if upscaled:
        print(f"warning: {upscaled} of {len(kept)} images in {folder} are smaller than {image_size / UPSCALE_WARNING:g} "
              f"pixels on their shorter side and were upscaled more than {UPSCALE_WARNING:g}x to {image_size}x"
              f"{image_size} (blurry; consider a smaller --image-size)", file=sys.stderr)
    if not kept:
        raise DataError(f"none of the {len(files)} image files under {folder} could be read")
    stacked = torch.stack(images)  # (N, 3, S, S)
    if all(grayscale):
        stacked = stacked[:, :1].contiguous()  # gray -> RGB copied the gray value into each channel
    return ImageData(stacked, torch.tensor(kept, dtype=torch.int64), classes,
                     source=f"folder {folder}: {len(kept):,} images" + (f" in {len(classes)} classes" if classes else ""))


# ----------------------------------------------------------------------------- batches

class BatchIterator:
    """Infinite (x_uint8, labels) batches over an ImageData, sharded per rank exactly like
    torch.utils.data.DistributedSampler(shuffle=True, seed=seed, drop_last=True) and reshuffled each epoch
    from its own torch.Generator seeded from (seed, epoch) -- never the global RNG -- so resume is exact:
    state_dict() -> {"epoch": int, "position": int}; load_state_dict(d) continues from that batch.

    batch_size is per rank; each epoch drops the last partial batch. `position` counts the batches
    already returned in the current epoch.
    """

    def __init__(self, data: ImageData, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data = data
        self.batch_size = batch_size
        # DistributedSampler shuffles with a private torch.Generator seeded with seed + epoch.
        self.sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batches_per_epoch = self.sampler.num_samples // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"batch size {batch_size} is larger than the {self.sampler.num_samples} images "
                            f"each of {world_size} process(es) gets; lower --batch-size")
        self.epoch = 0
        self.position = 0
        self._order: torch.Tensor | None = None  # this rank's indices for self.epoch

    def _epoch_order(self) -> torch.Tensor:
        """This rank's shuffled indices for the current epoch, (num_samples,) int64."""
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = torch.tensor(list(self.sampler), dtype=torch.int64)
        return self._order

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        start = self.position * self.batch_size
        idx = self._epoch_order()[start:start + self.batch_size]
        self.position += 1
        return self.data.images[idx], self.data.labels[idx]  # (B, C, H, W) uint8, (B,)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.position, self._order = int(d["epoch"]), int(d["position"]), None
