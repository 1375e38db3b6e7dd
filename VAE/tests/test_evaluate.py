"""evaluate.py on tiny checkpoints: the harness's metrics plus the VAE's bounds, active units and figures."""
import functools
import json
import math

import pytest

import evaluate
import train
from shared import evaluation, features


@pytest.fixture
def quick_harness(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    score = features.accuracy
    monkeypatch.setattr(features, "accuracy", lambda net, data: score(net, evaluation.subset(data, 500, seed=0)))
    monkeypatch.setattr(evaluation, "evaluate", functools.partial(evaluation.evaluate, memorisation_reference=500))


def tiny_run(tmp_path, **overrides):
    cfg = dict(dataset="mnist", image_size=16, batch_size=8, z_dim=4, width=4, hidden=16, threads=1,
               precision="fp32", steps=3, out=str(tmp_path / "run"))
    return train.main(train.TrainConfig(**{**cfg, **overrides}))


def test_evaluate_bernoulli_records_bounds_in_nats_and_bits_per_binary_pixel(tmp_path, quick_harness):
    run = tiny_run(tmp_path)
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60, nll_num=20, iwae_k=16, iwae_chunk=5))
    assert record["fid"] > record["fid_floor"] >= 0 and math.isfinite(record["kid"])
    assert 0 <= record["mse"] and math.isfinite(record["psnr"]) and "linear_probe" in record
    d = 16 * 16
    assert record["likelihood"] == "bernoulli" and record["nll_num"] == 20 and record["iwae_k"] == 16
    assert 0 < record["iwae_nll_nats"] < record["nelbo_nats"] < 2 * d  # IWAE tighter than the ELBO
    assert record["nelbo_nats"] == pytest.approx(record["rec_nats"] + record["kl_nats"], rel=1e-5)
    assert record["iwae_nll_bits_per_binary_pixel"] == pytest.approx(record["iwae_nll_nats"] / (d * math.log(2)))
    assert "bits_per_dim" not in record  # a binary likelihood is not one of the 8-bit data
    assert record["num_active_units"] == len(record["active_units"]) <= 4
    assert all(0 <= u < 4 for u in record["active_units"])
    for key in ("reconstructions_png", "prior_samples_png", "interpolations_png"):
        assert (run / key.replace("_png", ".png")).is_file()
    saved = json.loads((run / "eval.jsonl").read_text().splitlines()[-1])
    assert saved["iwae_nll_nats"] == record["iwae_nll_nats"] and saved["active_units"] == record["active_units"]


def test_evaluate_logistic_reports_the_harness_bits_per_dim_of_the_8_bit_data(tmp_path, quick_harness):
    run = tiny_run(tmp_path, likelihood="logistic")
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=30, nll_num=10, iwae_k=4, iwae_chunk=4))
    assert record["likelihood"] == "logistic"
    # 8-bit data, about uniform for an untrained decoder: a few bits per dim, at most ~8 + slack
    assert 0 < record["bits_per_dim"] < 12
    assert record["iwae_nll_nats"] < record["nelbo_nats"] * 1.001  # both are Monte-Carlo estimates: a bound in expectation
    assert "iwae_nll_bits_per_binary_pixel" not in record


def test_active_units_uses_the_variance_of_the_posterior_means():
    import torch
    mu = torch.zeros(100, 3)
    mu[:, 1] = torch.linspace(-1, 1, 100)  # variance ~0.34: active
    mu[:, 2] = torch.linspace(-0.1, 0.1, 100)  # variance ~0.0034: inactive
    assert evaluate.active_units(mu) == [1]
