"""Feature extractors for sample-quality metrics, offline-first.

FID and its relatives compare two sets of images in the feature space of a fixed network. The usual choice,
Inception-v3 trained on ImageNet, needs a weights download and says little about 32x32 digits or shapes.
Here the default extractor is a small CNN classifier trained on the evaluated dataset's own training split:
  * trained automatically on first use (about a minute on a CPU), cached on disk under a key made of a hash of
    the training images and labels plus this file's architecture version, and its held-out accuracy printed;
  * features = the 256-d penultimate activations (FID, KID, precision/recall, memorisation);
    class probabilities = its softmax (Inception Score, per-class accuracy of conditional samples).
Every figure names its extractor (`Extractor.name`), e.g. "classifier:mnist@32 (test acc 98.9%)".
Inception-v3 FID for natural images: pass local torchvision Inception-v3 weights (`--inception-weights`);
nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared.data import DataError, ImageData, to_float

ARCH_VERSION = "cnn-v2"  # bump when the network or its training recipe changes: invalidates caches
INPUT_SIZE = 32  # every image is resized to 32x32 before the classifier: one extractor per dataset


def default_cache_dir() -> Path:
    """$GENMODELS_CACHE, else $XDG_CACHE_HOME/generative-models, else ~/.cache/generative-models."""
    if os.environ.get("GENMODELS_CACHE"):
        return Path(os.environ["GENMODELS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "generative-models"


class Classifier(nn.Module):
    """Small VGG-style CNN: 3 stages of two 3x3 convs + BN + ReLU, then a 256-d feature layer and a linear head.

    Width 16 (about 20 MFLOP per 32x32 image) keeps feature extraction at ~3k images/s on 2 CPU cores.
    """

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)  # (B, C, 32, 32) -> (B, 4w, 4, 4)
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 16, 256), nn.ReLU())
        self.head = nn.Linear(256, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) -> features (B, 256)."""
        if x.shape[-1] != INPUT_SIZE:
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        return self.features(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@dataclass
class Extractor:
    """A frozen feature network and the label it puts on every figure it produces."""
    name: str
    network: nn.Module

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] (N, C, H, W) -> (features (N, D) float64, class probabilities (N, K))."""
        feats, probs = [], []
        for chunk in images.split(batch_size):
            f = self.network.embed(chunk.float())
            feats.append(f.double())
            probs.append(F.softmax(self.network.head(f), dim=1).double())
        return torch.cat(feats), torch.cat(probs)


def data_key(data: ImageData) -> str:
    """Hash of the images, labels and the extractor's architecture version (the cache key)."""
    h = hashlib.sha1(ARCH_VERSION.encode())
    h.update(str(tuple(data.images.shape)).encode())
    h.update(data.images.numpy().tobytes())
    h.update(data.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def train_classifier(train: ImageData, steps: int = 600, batch_size: int = 128, seed: int = 0) -> Classifier:
    """Fit the classifier with Adam + one-cycle LR for a fixed number of steps (~77k images, ~1 minute on CPU).

    A fixed step budget rather than epochs: 15 epochs of a 5k-image MNIST, 1.5 of the 50k shapes.
    """
    gen = torch.Generator().manual_seed(seed)
    net = Classifier(train.channels, train.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(train), (batch_size,), generator=gen)
        loss = F.cross_entropy(net(to_float(train.images[idx])), train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: Classifier, data: ImageData, batch_size: int = 500) -> float:
    """Top-1 accuracy on a labelled ImageData."""
    correct = 0
    for x, y in zip(data.images.split(batch_size), data.labels.split(batch_size)):
        correct += (net(to_float(x)).argmax(1) == y).sum().item()
    return correct / len(data)


def classifier_extractor(train: ImageData, test: ImageData, dataset: str, cache_dir: Path | None = None,
                         log=print) -> Extractor:
    """The dataset's own classifier: loaded from the cache, or trained now and cached."""
    if train.num_classes < 2:
        raise DataError(f"{dataset} has no class labels to train the feature classifier on; "
                        f"use a labelled dataset or --inception-weights PATH")
    cache = (cache_dir or default_cache_dir()) / f"classifier-{data_key(train)}.pt"
    net = Classifier(train.channels, train.num_classes)
    if cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        net.load_state_dict(state["network"])
        acc = state["test_accuracy"]
        net.eval()
    else:
        log(f"training the {dataset} feature classifier (first use, cached at {cache}) ...")
        start = time.perf_counter()
        net = train_classifier(train)
        acc = accuracy(net, test)
        log(f"trained in {time.perf_counter() - start:.0f} s")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"network": net.state_dict(), "test_accuracy": acc}, tmp)
        tmp.replace(cache)
    log(f"feature extractor: {dataset} classifier, held-out accuracy {100 * acc:.1f}%")
    return Extractor(name=f"classifier:{dataset}@{INPUT_SIZE} (test acc {100 * acc:.1f}%)", network=net)


class InceptionFeatures(nn.Module):
    """Inception-v3 from LOCAL weights: 2048-d pool features and ImageNet class probabilities.

    Takes torchvision's inception_v3 state dict (1000 classes) or pytorch-fid's ported TF weights
    (pt_inception-2015-12-05-*.pth, 1008 classes; same parameter names). With the latter the parameters are
    those of TF-FID, but the blocks keep torchvision's pooling, so figures are close to, not identical with,
    TF-FID numbers (this is stated in the extractor's name).
    """

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        self.num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
        aux = any(k.startswith("AuxLogits.") for k in state)
        self.net = inception_v3(weights=None, aux_logits=aux, init_weights=False, num_classes=self.num_classes)
        self.net.load_state_dict(state)
        self.net.eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> (B, 2048) pool3 features (resized to 299, ImageNet-normalised)."""
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        n = self.net
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"]:
            x = getattr(n, name)(x)
        return x.flatten(1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.fc(features)


def inception_extractor(weights_path: str | Path) -> Extractor:
    """Inception-v3 features from a local torchvision weights file (never downloaded)."""
    path = Path(weights_path)
    if not path.is_file():
        raise DataError(f"Inception weights not found at {path}: pass --inception-weights PATH to a local "
                        f"torchvision inception_v3 or pytorch-fid state dict (nothing is downloaded)")
    try:
        net = InceptionFeatures(path)
    except Exception as e:  # not a state dict, or not Inception-v3's
        raise DataError(f"{path} is not an Inception-v3 state dict ({str(e).splitlines()[0][:120]})") from None
    kind = "pytorch-fid weights, torchvision pooling" if net.num_classes == 1008 else "torchvision weights"
    return Extractor(name=f"inception-v3 ({path.name}; {kind})", network=net)
