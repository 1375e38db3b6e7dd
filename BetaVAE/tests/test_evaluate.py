"""evaluate.py on a tiny shapes checkpoint: the harness records the VAE's sample, reconstruction and
disentanglement metrics, and the folder's own KL / reconstruction figures."""
import json
import math

import pytest

import evaluate
import train
from shared import features


def test_evaluate_writes_a_record_with_disentanglement_and_the_folders_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path / "cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))
    run = train.main(train.TrainConfig(dataset="shapes", image_size=16, batch_size=8, z_dim=4, width=8, hidden=16,
                                       threads=1, precision="fp32", steps=3, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(run), num=60))
    assert 0 <= record["mig"] <= 1 and 0 <= record["factor_vae"] <= 1  # the shapes factors were read
    assert record["fid"] > record["fid_floor"] >= 0 and math.isfinite(record["kid"])
    assert 0 < record["mse"] < 4 and record["psnr"] > 0  # images in [-1, 1]: MSE below (2)^2
    assert len(record["kl_per_dim"]) == 4 and record["kl"] == pytest.approx(sum(record["kl_per_dim"]), abs=1e-3)
    assert record["neg_elbo_nats"] == pytest.approx(record["recon_nats"] + record["kl"], rel=1e-6)
    assert 0 < record["recon_nats"] < 3 * 16 * 16 * math.log(2) * 1.5  # near log 2 per intensity, untrained
    assert record["objective"] == "beta" and record["beta"] == 4.0 and record["step"] == 3
    assert "bits_per_dim" not in record  # the Bernoulli on intensities is no 8-bit likelihood
    assert 0 <= record["linear_probe"] <= 1
    assert json.loads((run / "eval.jsonl").read_text().splitlines()[-1])["mig"] == record["mig"]
