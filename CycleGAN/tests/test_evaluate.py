"""evaluate.py: the translation figures against ground truth, checked on an exact translator and on a tiny run."""
import json

import pytest
import torch
from torch import nn

import evaluate
import train
from domains import load_domains
from shared import features


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # both tests use the same two classifiers (MNIST, inverted MNIST)


@pytest.fixture
def quick_classifiers(cache, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(cache))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))


class Negate(nn.Module):
    """The exact translator of the invert pair: to_float(255 - u) = -to_float(u)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # translate() reads the device from a parameter

    def forward(self, x):
        return -x


def test_an_exact_translator_scores_zero_error_the_real_images_accuracy_and_zero_fid(quick_classifiers):
    train_d, test_d = (load_domains("mnist", None, 16, split, pair="invert") for split in ("train", "test"))
    extractors = evaluate.domain_classifiers(train_d, test_d, "mnist")
    record = evaluate.translation_figures(Negate(), Negate(), train_d, test_d, num=200, seed=0, extractors=extractors)
    assert record["translation_mse_ab"] < 1e-12 and record["translation_mse_ba"] < 1e-12
    assert record["cycle_mse_ab"] < 1e-12 and record["copy_mse_ab"] > 1  # inverting moves a digit image a lot
    # the translations are the real B images, so the B classifier's accuracy on them is its accuracy on B
    idx = torch.randperm(10_000, generator=torch.Generator().manual_seed(0))[:200]
    real_b = features.to_float(test_d.b.images[idx])
    accuracy_b = (extractors[1](real_b)[1].argmax(1) == test_d.b.labels[idx]).double().mean().item()
    assert record["translation_accuracy_ab"] == pytest.approx(accuracy_b)
    assert abs(record["fid_ab"]) < 1e-3 and record["fid_floor_ab"] > 0.01  # identical sets vs two real samples
    assert record["fid"] == record["fid_ab"] and record["num_translated"] == 200


def test_a_tiny_run_is_evaluated_into_eval_jsonl_with_the_translation_keys(tmp_path, quick_classifiers):
    run = train.main(train.TrainConfig(dataset="mnist", pair="invert", image_size=16, batch_size=4, g_width=4,
                                       n_blocks=1, d_width=4, minutes=0, steps=2, threads=1, precision="fp32",
                                       out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=40))
    for key in ("translation_mse", "translation_accuracy", "fid", "translation_mse_ab", "translation_mse_ba",
                "translation_accuracy_ab", "translation_accuracy_ba", "fid_ba", "cycle_mse_ab", "copy_mse_ba"):
        assert key in record and record[key] == record[key], key  # present and not nan
    assert 0 <= record["translation_accuracy"] <= 1 and record["translation_mse"] > 0
    assert record["fid"] > record["fid_floor"] >= 0  # two steps of training are far from real inverted digits
    assert record["pair"] == "mnist <-> mnist-inverted"
    assert record["params"] == 2 * sum(p.numel() for p in evaluate.load_generators(run, "cpu")[0].parameters())
    assert record["train_images_per_s"] > 0 and "sample_images_per_s" not in record  # no sampling from noise
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]
