"""evaluate.py on tiny checkpoints: the harness records reconstruction, sample and representation metrics and
this folder's codebook and prior figures (and no 8-bit bits_per_dim)."""
import json
import math

import pytest

import evaluate
import train
from shared import features

SIZES = dict(image_size=16, batch_size=8, hidden=8, res_hidden=8, codes=16, code_dim=4, prior_width=16,
             prior_layers=1, prior_heads=2, threads=1, precision="fp32")


@pytest.fixture
def quick_classifier(tmp_path_factory, monkeypatch):
    """A 20-step feature classifier, trained once for this module's tests (a cache of their own)."""
    monkeypatch.setenv("GENMODELS_CACHE", str(tmp_path_factory.getbasetemp() / "classifier-cache"))
    quick = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda d: quick(d, steps=20))


def test_evaluate_writes_a_record_with_both_stages_metrics(tmp_path, quick_classifier):
    out = train.main(train.TrainConfig(**SIZES, steps=3, prior_steps=3, out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(out), num=60))
    assert record["fid"] > record["fid_floor"] >= 0 and math.isfinite(record["kid"])
    assert 0 < record["mse"] < 4 and record["psnr"] == pytest.approx(10 * math.log10(4 / record["mse"]), abs=3)
    assert 0 <= record["linear_probe"] <= 1 and 0 <= record["knn"] <= 1
    assert 1 <= record["codebook_perplexity"] <= 16 and 0 < record["codebook_usage"] <= 1
    assert record["codebook_perplexity"] <= 16 * record["codebook_usage"] + 1e-9  # exp(H) <= number of codes used
    assert 0 < record["prior_bits_per_code"] < 8  # near log2(16) = 4 bits for a barely trained prior
    assert record["prior_code_bits_per_dim"] == pytest.approx(record["prior_bits_per_code"] * 16 / 256)
    assert record["uniform_code_bits_per_dim"] == pytest.approx(16 * 4 / 256)
    assert "bits_per_dim" not in record  # no likelihood of the 8-bit pixels
    assert record["train_images_per_s"] > 0 and record["sample_images_per_s"] > 0
    assert json.loads((out / "eval.jsonl").read_text().splitlines()[-1])["fid"] == record["fid"]


def test_a_vqvae_without_a_prior_is_scored_without_samples(tmp_path, quick_classifier):
    out = train.main(train.TrainConfig(**SIZES, steps=2, stage="vqvae", out=str(tmp_path / "run")))
    record = evaluate.main(evaluate.EvalConfig(checkpoint=str(out), num=60))
    assert "fid" not in record and "prior_bits_per_code" not in record
    assert record["mse"] > 0 and record["codebook_perplexity"] >= 1


def test_bad_temperature_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.cli_main(["--checkpoint", str(tmp_path), "--temperature", "-1"])
    assert e.value.code == 2 and "--temperature" in capsys.readouterr().err
