"""The evaluation harness and the classifier feature extractor, on tiny shapes data."""
import json

import pytest
import torch

from shared import features
from shared.data import load_dataset, to_float
from shared.evaluation import Capabilities, evaluate, subset

SIZE = 16


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    torch.manual_seed(0)
    train = subset(load_dataset("shapes", image_size=SIZE, split="train"), 3000, seed=0)
    test = subset(load_dataset("shapes", image_size=SIZE, split="test"), 1000, seed=0)
    net = features.train_classifier(train, steps=150, batch_size=64)
    acc = features.accuracy(net, test)
    assert acc > 0.8, f"the shape classifier should learn 3 shapes easily, got {acc:.2f}"
    return features.Extractor(name=f"classifier:shapes (test acc {acc:.2f})", network=net)


def test_classifier_is_cached_by_data_hash(tmp_path, monkeypatch):
    data = subset(load_dataset("shapes", image_size=SIZE), 300, seed=0)
    calls = []
    real_train = features.train_classifier
    monkeypatch.setattr(features, "train_classifier",
                        lambda d: calls.append(1) or real_train(d, steps=10))
    first = features.classifier_extractor(data, data, "shapes", cache_dir=tmp_path, log=lambda s: None)
    second = features.classifier_extractor(data, data, "shapes", cache_dir=tmp_path, log=lambda s: None)
    assert calls == [1]  # trained once, then loaded from the cache
    x = to_float(data.images[:8])
    assert torch.allclose(first(x)[0], second(x)[0])
    other = subset(load_dataset("shapes", image_size=SIZE), 300, seed=1)
    assert features.data_key(other) != features.data_key(data)


def test_a_model_that_returns_training_images_scores_like_the_floor(extractor, tmp_path):
    memo = subset(load_dataset("shapes", image_size=SIZE), 2000, seed=2)  # what evaluate(seed=0) searches
    perfect = Capabilities(sample=lambda n, g: to_float(memo.images[torch.randperm(len(memo), generator=g)[:n]]),
                           reconstruct=lambda x: x, encode=lambda x: x.flatten(1))
    noise = Capabilities(sample=lambda n, g: torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1)
    kw = dict(dataset="shapes", data_root=None, image_size=SIZE, num=400, extractor=extractor,
              memorisation_reference=2000, log=lambda s: None)
    good = evaluate("copycat", "test", perfect, run_dir=tmp_path, **kw)
    bad = evaluate("noise", "test", noise, run_dir=tmp_path, **kw)
    assert good["fid"] < 3 * good["fid_floor"] + 1 and bad["fid"] > 10 * good["fid"]
    assert good["precision"] > 0.8 and good["recall"] > 0.8 and bad["precision"] < 0.1
    assert good["memorised_fraction"] > 0.9 and bad["memorised_fraction"] == 0  # copies of train are flagged
    assert good["mse"] == 0 and good["psnr"] == float("inf")
    assert good["linear_probe"] > 0.5 and "mig" in good and "factor_vae" in good
    assert "mse" not in bad and "linear_probe" not in bad
    records = [json.loads(l) for l in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["model"] for r in records] == ["copycat", "noise"]
    assert records[0]["extractor"].startswith("classifier:shapes")


def test_conditional_accuracy_tracks_the_requested_class(extractor):
    train = load_dataset("shapes", image_size=SIZE)
    by_class = [train.images[train.labels == c] for c in range(3)]

    def obey(labels, g):
        return torch.stack([to_float(by_class[int(c)][i]) for i, c in enumerate(labels)])

    def ignore(labels, g):
        return obey(torch.zeros_like(labels), g)
    kw = dict(dataset="shapes", data_root=None, image_size=SIZE, num=150, extractor=extractor, log=lambda s: None)
    assert evaluate("obey", "test", Capabilities(sample_class=obey), **kw)["class_accuracy"] > 0.8
    assert evaluate("ignore", "test", Capabilities(sample_class=ignore), **kw)["class_accuracy"] < 0.5


def test_inception_extractor_loads_local_weights_and_never_downloads(tmp_path):
    from torchvision.models import inception_v3

    with pytest.raises(features.DataError, match="--inception-weights"):
        features.inception_extractor(tmp_path / "missing.pth")
    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    ex = features.inception_extractor(weights)
    feats, probs = ex(torch.rand(2, 1, 16, 16) * 2 - 1)  # grayscale, small: resized to 299, 3 channels
    assert feats.shape == (2, 2048) and probs.shape == (2, 1000)
    assert torch.allclose(probs.sum(1), torch.ones(2, dtype=probs.dtype)) and "torchvision weights" in ex.name
    # pytorch-fid's file: 1008 classes, no auxiliary head, same parameter names
    fid_weights = tmp_path / "pt_inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict(),
               fid_weights)
    ex = features.inception_extractor(fid_weights)
    assert ex(torch.rand(1, 3, 32, 32) * 2 - 1)[1].shape == (1, 1008) and "pytorch-fid" in ex.name
    junk = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(3)}, junk)
    with pytest.raises(features.DataError, match="not an Inception-v3 state dict"):
        features.inception_extractor(junk)


def test_ood_auroc_tells_shapes_from_mnist_by_a_likelihood_that_sees_the_difference(extractor):
    """A stand-in 'bits/dim': the mean spread across colour channels. MNIST brought to RGB has none; every
    shapes image has some (its background is (24, 24, 32)). So the OOD set (MNIST) scores lower than every
    in-distribution image: AUROC 0 (it 'looks more likely'), 1 for the negated score; the in-distribution
    mean is the harness's own bits_per_dim."""
    def channel_spread(images_uint8):
        return images_uint8.float().std(1).flatten(1).mean(1)

    kw = dict(data_root=None, image_size=SIZE, num=200, extractor=extractor, log=lambda s: None)
    rec = evaluate("grey", "test", Capabilities(bits_per_dim=channel_spread), dataset="shapes", ood="mnist", **kw)
    assert rec["ood_dataset"] == "mnist" and rec["ood_in_bits_per_dim"] == pytest.approx(rec["bits_per_dim"])
    assert rec["ood_auroc"] == 0.0 and rec["ood_bits_per_dim"] == 0.0
    flipped = evaluate("neg", "test", Capabilities(bits_per_dim=lambda x: -channel_spread(x)), dataset="shapes",
                       ood="mnist", **kw)
    assert flipped["ood_auroc"] == 1.0
    with pytest.raises(ValueError, match="bits/dim"):
        evaluate("gan", "test", Capabilities(sample=lambda n, g: torch.zeros(n, 3, SIZE, SIZE)), dataset="shapes",
                 ood="mnist", **kw)


def test_as_channels_converts_grey_and_rgb():
    from shared.evaluation import as_channels

    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    grey = as_channels(rgb, 1)
    assert grey.shape == (2, 1, 4, 4) and int(grey[0, 0, 0, 0]) == round(0.299 * 255)
    back = as_channels(grey, 3)
    assert back.shape == (2, 3, 4, 4) and torch.equal(back[:, 0], back[:, 2])
    assert as_channels(rgb, 3) is rgb
